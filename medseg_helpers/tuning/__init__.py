"""Choosing settings (notebooks 07 and 10): Optuna searches, patient-level
cross-validation and the small controlled experiments of notebook 10.
"""

from medseg_helpers.exports import lazy_exports

_EXPORTS = {
    "Experiment": "experiments",
    "MODEL_PARAMS": "space",
    "PruningCallback": "search",
    "RunResult": "experiments",
    "SAMPLERS": "search",
    "SearchParam": "space",
    "OneStandardErrorChoice": "crossval",
    "apply_params": "space",
    "choose_one_standard_error": "crossval",
    "cross_validate": "crossval",
    "default_search_space": "space",
    "default_storage": "search",
    "derive_dataset": "experiments",
    "development_folds": "crossval",
    "evaluate_run": "crossval",
    "grid_size": "space",
    "make_objective": "search",
    "make_pruner": "search",
    "make_sampler": "search",
    "open_study": "search",
    "optimize_until": "search",
    "outer_split": "crossval",
    "param_importances": "search",
    "plot_optimisation_history": "search",
    "plot_param_importances": "search",
    "run_study": "search",
    "score_cases": "experiments",
    "study_dataframe": "search",
    "study_key": "space",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
