"""Registration reports: evaluation against synthetic ground truth and the per-layout QA page."""
