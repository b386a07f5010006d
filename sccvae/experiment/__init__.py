"""The experiment wing: one run configuration (`config`), the prepared screen and fold (`prepare`), one fold as
named stages (`fold`), the pooled report (`report`), and launching many folds or the demo (`launch`).

Nothing in the core library imports this package; it sits on top of it."""
from .config import RunConfig, option_reach, GRAPH_ORDER, RUN_SHIFT_MODES, PRESETS, preset
from .prepare import Prepared, prepare, load_prepared, FoldContext, fold_context, check_h5ad, load_screen
from .fold import FoldResult, run_fold, run_baselines
from .report import report
from .launch import run_many, run_demo, task_command, parse_folds
