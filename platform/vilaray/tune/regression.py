"""RegMix-style mixture regression: the objective as a function of the mix weights, fitted on finished
trials, checked by rank correlation on held-out trials, and searched on the simplex for the next mixes.

RegMix (arXiv 2407.01492) fits many small proxy runs on random mixtures and trains the predicted best; here
the proxies are a sweep's trials. The model is a ridge regression on one of two feature families, chosen by
cross-validation: the weights and their pairwise products (quadratic on the simplex, RegMix's linear model
grown by one degree), or the weights and their logarithms, a mixing law's shape (Data Mixing Laws, arXiv
2403.16952: a source's loss falls steeply as its share leaves zero, which no quadratic follows). The
held-out rank correlation is nested: the family and the ridge penalty are chosen again inside every fold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Feature families the fit chooses between: quadratic, or log-linear with these floors under log(w + eps)
# (how far from zero a share's effect saturates; weights are shares, so 0.003-0.1 spans a share's range).
LOG_EPS = (0.003, 0.01, 0.03, 0.1)


@dataclass(frozen=True)
class MixtureFit:
    """A fitted regression over `sources` (weights in this order) and how well it ranks unseen trials."""

    sources: list[str]
    model: object  # a fitted scikit-learn pipeline
    heldout_spearman: float  # rank correlation of out-of-fold predictions with the observed objective
    mode: str  # "max" or "min": which way is better
    n_trials: int
    family: str  # the chosen features: "quadratic" or "log(w + eps)"

    def predict(self, weights: np.ndarray) -> np.ndarray:
        return self.model.predict(np.atleast_2d(weights))

    def propose(
        self, k: int, seed: int = 0, candidates: int = 200_000, avoid: np.ndarray | None = None
    ) -> list[dict[str, float]]:
        """The `k` best predicted mixtures among Dirichlet candidates, each at least 0.05 (L1) from the ones
        before it and from `avoid` (the mixtures already run), so proposals are not one point k times."""
        rng = np.random.default_rng(seed)
        pool = rng.dirichlet(np.ones(len(self.sources)), size=candidates)
        scores = self.predict(pool)
        order = np.argsort(-scores if self.mode == "max" else scores)
        taken: list[np.ndarray] = [] if avoid is None else list(np.atleast_2d(avoid))
        out = []
        for i in order:
            if all(np.abs(pool[i] - t).sum() >= 0.05 for t in taken):
                taken.append(pool[i])
                out.append({s: round(float(w), 6) for s, w in zip(self.sources, pool[i])})
                if len(out) == k:
                    break
        return out

    def best(self, seed: int = 0) -> dict[str, float]:
        return self.propose(1, seed)[0]


def mixture_features():
    """A scikit-learn transformer from weights to one family's features (`kind`, `eps` are its params)."""
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.preprocessing import PolynomialFeatures

    class MixtureFeatures(BaseEstimator, TransformerMixin):
        def __init__(self, kind: str = "quadratic", eps: float = 0.01):
            self.kind, self.eps = kind, eps

        def fit(self, x, y=None):
            return self

        def transform(self, x):
            x = np.asarray(x, dtype=float)
            if self.kind == "quadratic":
                return PolynomialFeatures(degree=2, include_bias=False).fit_transform(x)
            return np.hstack([x, np.log(x + self.eps)])

    return MixtureFeatures()


def selected_model(n_trials: int, folds: int):
    """Ridge on the family (and penalty) that predicts best under cross-validation over `n_trials`."""
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import GridSearchCV, KFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    pipe = Pipeline(
        [("features", mixture_features()), ("scale", StandardScaler()),
         ("ridge", RidgeCV(alphas=np.logspace(-6, 2, 30)))]
    )  # fmt: skip
    grid = [{"features__kind": ["quadratic"]}, {"features__kind": ["log"], "features__eps": list(LOG_EPS)}]
    inner = KFold(min(folds, n_trials - 1), shuffle=True, random_state=0)
    return GridSearchCV(pipe, grid, cv=inner, scoring="neg_mean_squared_error")


def fit_mixture(
    weights: list[dict[str, float]], objective: list[float], mode: str, folds: int = 5
) -> MixtureFit:
    """Fit the objective on the trials' mix weights (each dict: source -> weight) and score the fit by the
    Spearman correlation of out-of-fold predictions (the family chosen afresh in each fold) with the
    observed values."""
    from scipy.stats import spearmanr
    from sklearn.model_selection import KFold, cross_val_predict

    if len(weights) != len(objective) or len(weights) < folds:
        raise ValueError(
            f"a mixture fit needs at least {folds} finished trials with an objective, got {len(objective)}"
        )
    sources = sorted({s for w in weights for s in w})
    x = np.array([[w.get(s, 0.0) / sum(w.values()) for s in sources] for w in weights])
    y = np.asarray(objective, dtype=float)
    outer = KFold(folds, shuffle=True, random_state=0)
    smallest_train = len(y) - math.ceil(len(y) / folds)  # the inner folds split an outer fold's training part
    out_of_fold = cross_val_predict(selected_model(smallest_train, folds), x, y, cv=outer)
    rho = float(spearmanr(out_of_fold, y).statistic)
    search = selected_model(len(y), folds).fit(x, y)
    chosen = search.best_params_
    family = "quadratic" if chosen["features__kind"] == "quadratic" else f"log(w + {chosen['features__eps']})"
    return MixtureFit(sources, search.best_estimator_, rho, mode, len(y), family)
