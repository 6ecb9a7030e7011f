"""Search: train weights and K-op architectures (methods fixed, joint, bilevel), runs on disk.

    from chrysalis.search import SearchConfig, run_search, retrain, evaluate_run
    results = run_search(SearchConfig(data="mnist5k", space="lenet", method="joint", epochs=2))

See docs/SEARCH.md for the run-directory layout and the results.json schema.
"""

from .checkpoint import load_checkpoint, save_atomic
from .config import ConfigError, SearchConfig
from .engine import SearchRun, build_model, evaluate, load_split, run_search
from .methods import METHOD_CLASSES, Bilevel, Fixed, Joint, Method, lr_factor, make_method
from .runs import evaluate_run, load_run_config, retrain

__all__ = [
    "METHOD_CLASSES", "Bilevel", "ConfigError", "Fixed", "Joint", "Method", "SearchConfig", "SearchRun",
    "build_model", "evaluate", "evaluate_run", "load_checkpoint", "load_run_config", "load_split",
    "lr_factor", "make_method", "retrain", "run_search", "save_atomic",
]
