"""RegMix-style mixture regression: the objective as a function of the mix weights, fitted on finished
trials, checked by rank correlation on held-out trials, and searched on the simplex for the next mixes.

RegMix (arXiv 2407.01492) fits many small proxy runs on random mixtures and trains the predicted best; here
the proxies are a sweep's trials. The model is a ridge regression on the weights and their pairwise
products (quadratic on the simplex), with the regularisation chosen by cross-validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MixtureFit:
    """A fitted regression over `sources` (weights in this order) and how well it ranks unseen trials."""

    sources: list[str]
    model: object  # a fitted scikit-learn pipeline
    heldout_spearman: float  # rank correlation of out-of-fold predictions with the observed objective
    mode: str  # "max" or "min": which way is better
    n_trials: int

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


def fit_mixture(
    weights: list[dict[str, float]], objective: list[float], mode: str, folds: int = 5
) -> MixtureFit:
    """Fit the objective on the trials' mix weights (each dict: source -> weight) and score the fit by the
    Spearman correlation of out-of-fold predictions with the observed values."""
    from scipy.stats import spearmanr
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import PolynomialFeatures

    if len(weights) != len(objective) or len(weights) < folds:
        raise ValueError(
            f"a mixture fit needs at least {folds} finished trials with an objective, got {len(objective)}"
        )
    sources = sorted({s for w in weights for s in w})
    x = np.array([[w.get(s, 0.0) / sum(w.values()) for s in sources] for w in weights])
    y = np.asarray(objective, dtype=float)

    def model():
        return make_pipeline(
            PolynomialFeatures(degree=2, include_bias=False), RidgeCV(alphas=np.logspace(-6, 2, 30))
        )

    out_of_fold = cross_val_predict(model(), x, y, cv=KFold(folds, shuffle=True, random_state=0))
    rho = float(spearmanr(out_of_fold, y).statistic)
    return MixtureFit(sources, model().fit(x, y), rho, mode, len(y))
