"""The main job, stage by stage: translate -> pool -> segment -> pseudo-label -> evaluate.

Each stage is a function of explicit inputs; :mod:`vstk.pipeline.run` chains them for
``vstk run`` and records finished stages so a rerun resumes.
"""
