"""Deprecated, kept for one release: re-exports the old `sccvae.runner` names from the experiment wing.

Import from `sccvae.experiment` (config, prepare, fold, report, launch) and `sccvae.utils` instead."""
# Deprecated: `sccvae.runner` is now the experiment wing `sccvae.experiment`; this module re-exports its old names
# for one release. Import from the new homes instead:
#
# - `sccvae.experiment.config`: GRAPHS (now `GRAPH_ORDER`), GRAPH_NAMES, BASELINES, DEFAULT_METHOD, SHIFT_MODES (now
#   `RUN_SHIFT_MODES`), TEMPLATE_PARAMS, DEMO_SETTINGS, QUICK_SETTINGS, method_name (and `RunConfig`);
# - `sccvae.experiment.prepare`: Prepared, check_h5ad, load_screen, prepare, FoldContext, fold_context;
# - `sccvae.experiment.fold`: split_predictions, run_baselines, FoldResult, expression_distance, run_fold, fold_figures;
# - `sccvae.experiment.report`: report;
# - `sccvae.experiment.launch`: find_template, task_command, run_many, parse_folds, run_demo;
# - `sccvae.utils`: md_table, file_lock.
import logging
from .utils import md_table, file_lock
from .experiment.config import (GRAPH_ORDER as GRAPHS, GRAPH_NAMES, BASELINES, DEFAULT_METHOD,
                                RUN_SHIFT_MODES as SHIFT_MODES, TEMPLATE_PARAMS, DEMO_SETTINGS, QUICK_SETTINGS,
                                method_name)
from .experiment.prepare import Prepared, check_h5ad, load_screen, prepare, FoldContext, fold_context
from .experiment.fold import (split_predictions, run_baselines, FoldResult, expression_distance, run_fold,
                              fold_figures)
from .experiment.report import report
from .experiment.launch import find_template, task_command, run_many, parse_folds, run_demo

_log = logging.getLogger("sccvae")

__all__ = ['GRAPHS', 'GRAPH_NAMES', 'BASELINES', 'DEFAULT_METHOD', 'SHIFT_MODES', 'TEMPLATE_PARAMS', 'DEMO_SETTINGS',
           'QUICK_SETTINGS', 'method_name', 'Prepared', 'check_h5ad', 'load_screen', 'prepare', 'FoldContext',
           'fold_context', 'split_predictions', 'run_baselines', 'FoldResult', 'expression_distance', 'run_fold',
           'fold_figures', 'report', 'find_template', 'task_command', 'run_many', 'parse_folds', 'run_demo',
           'md_table', 'file_lock']
