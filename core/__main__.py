"""``python -m vstk``: the vstk command line (also what ``torchrun -m vstk ...`` runs on each rank)."""

from .cli import main

if __name__ == "__main__":
    main()
