"""Evaluation: segmentation metrics (Dice, ASSD), translation fidelity (PSNR, SSIM), statistics."""
