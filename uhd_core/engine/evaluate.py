"""Moved beside inference: ``uhd_core.evaluation`` (evaluation is no engine concern).

Re-exported here only for the trainer's existing import; new code imports ``uhd_core.evaluation``.
"""

from uhd_core.evaluation import (  # noqa: F401
    EVAL_SCORE_FLOOR,
    EvalOutput,
    cxcywh_to_xyxy,
    detections_from_decoded,
    evaluate_detector,
)
