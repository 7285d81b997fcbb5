from __future__ import annotations

import json


def render_json(review, **_) -> str:
    """``{"findings": [...], "summary": {...}, "observations": [...], "errors": [...]}``."""
    return json.dumps(review.to_json(), indent=2)
