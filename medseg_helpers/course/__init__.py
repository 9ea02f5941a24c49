"""Running the course as a whole: profiles (sizes, recipes, thresholds), the course
dataset and model that notebooks 05-10 share, the papermill runner and its report, the
static book of a run (`make book`), and the notebook conventions `medseg course check`
enforces.
"""

from medseg_helpers.exports import lazy_exports

_EXPORTS = {
    "BOOTSTRAP_MARKER": "hygiene",
    "CHECK_MARKER": "hygiene",
    "COURSE_MODEL_COMMON": "profiles",
    "COURSE_MODEL_RECIPES": "profiles",
    "DEFAULT_PROFILE": "profiles",
    "DEFAULT_TIMEOUT_S": "profiles",
    "NotebookResult": "runner",
    "PROFILES": "profiles",
    "PROFILE_ENV_VAR": "profiles",
    "Problem": "hygiene",
    "Profile": "profiles",
    "RENAMED_PROFILES": "profiles",
    "REQUIRED_HEADINGS": "hygiene",
    "STUDY_CASES": "data",
    "THRESHOLDS": "profiles",
    "TrainedModel": "model",
    "bootstrap_source": "hygiene",
    "build_book": "book",
    "check_course": "hygiene",
    "check_notebook": "hygiene",
    "check_thresholds": "runner",
    "copy_checked_outputs": "hygiene",
    "course_model_config": "model",
    "ensure_course_dataset": "data",
    "ensure_study_dataset": "data",
    "ensure_synthetic_dataset": "data",
    "ensure_trained_model": "model",
    "format_summary_table": "report",
    "format_value": "report",
    "get_profile_name": "profiles",
    "list_notebooks": "runner",
    "load_trained_model": "model",
    "missing_imports": "hygiene",
    "profile_defaults": "profiles",
    "record": "runner",
    "render_html": "report",
    "render_markdown": "report",
    "run_course": "runner",
    "stale_notebooks": "book",
    "strip_notebook": "hygiene",
    "synthetic_dataset_dir": "data",
    "threshold_checks": "runner",
    "write_course_report": "runner",
    "write_report": "report",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
