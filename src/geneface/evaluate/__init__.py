"""Evaluation of a person model (DESIGN.md step 9): image quality, landmark distance, lip sync and speed
on the person's validation clip and on unseen audio; ``geneface evaluate`` writes the report.

The optional perceptual metrics, LPIPS (`geneface.lpips`, shared with the renderer's training loss) and the
Fréchet Inception distance (`fid`), are used only where their registry weight packages are installed.
"""

from __future__ import annotations

from .report import EvalConfig, evaluate, markdown

__all__ = ["EvalConfig", "evaluate", "markdown"]
