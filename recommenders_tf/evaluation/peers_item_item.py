"""Item x item peers: EASE and RP3beta, the neighbourhood-style baselines that reproducibility
studies of top-K recommendation found hardest to beat (Dacrema et al. 2019, 2021; Anelli et
al. 2022).

Both learn a weight matrix W over the train items and score a user as the sum of the rows of
W for the items in their history, `scores = X_u · W`, with X the binary user x item matrix
(P1: every interaction counts once). Their hyperparameters are chosen on the validation slice
(`GridSearchPeer`); unknown users get the popularity ranking, as for every peer.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from recommenders_tf.evaluation.peer_base import GridSearchPeer, binary_matrix

__all__ = ["EASE", "RP3beta", "ease_weights", "rp3beta_weights", "EASE_IN_PLACE_ITEMS"]


# Above this many items the inverse is taken in place (see ease_weights).
EASE_IN_PLACE_ITEMS = 5000


def ease_weights(matrix, l2: float, in_place: Optional[bool] = None,
                 block_size: int = 1024) -> np.ndarray:
    """Steck's closed form: B = I - P diag(1 / diag(P)), P = (XᵀX + l2 I)⁻¹, so diag(B) = 0.

    Args:
      matrix: binary user x item matrix (scipy sparse or dense), n items.
      l2: the L2 penalty λ (> 0).
      in_place: invert by Cholesky inside the one n x n array (memory 8·n² bytes, 3.2 GB at
        20000 items) rather than with `np.linalg.inv` (faster, but about four n x n arrays at
        its peak); default in place above `EASE_IN_PLACE_ITEMS` items.
      block_size: rows per step while mirroring the triangle (temporary memory block x n).

    Returns:
      B as a dense float64 [n, n]. Costs O(n³) time.
    """
    if not l2 > 0:
        raise ValueError(f"EASE needs l2 > 0 (the penalty keeps XᵀX + l2·I invertible), "
                         f"got {l2}")
    gram = matrix.T @ matrix
    gram = np.array(gram.toarray() if hasattr(gram, "toarray") else gram, dtype=np.float64)
    n = gram.shape[0]
    gram[np.diag_indices(n)] += float(l2)
    if in_place is None:
        in_place = n > EASE_IN_PLACE_ITEMS
    precision = _spd_inverse_in_place(gram, block_size) if in_place else np.linalg.inv(gram)
    precision /= -np.diag(precision).copy()  # column j divided by -P_jj
    np.fill_diagonal(precision, 0.0)
    return precision


def _spd_inverse_in_place(gram: np.ndarray, block_size: int) -> np.ndarray:
    from scipy.linalg import lapack

    factor, info = lapack.dpotrf(gram, lower=False, overwrite_a=True, clean=False)
    if info == 0:
        inverse, info = lapack.dpotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE: XᵀX + λI is not positive definite (LAPACK info "
                                    f"{info}); are there NaNs in the interactions?")
    # dpotri fills the upper triangle only; mirror it block by block to stay in place.
    n = inverse.shape[0]
    for lo in range(0, n, block_size):
        hi = min(lo + block_size, n)
        inverse[lo:hi, :lo] = inverse[:lo, lo:hi].T
        diag_block = inverse[lo:hi, lo:hi]
        diag_block[...] = np.triu(diag_block) + np.triu(diag_block, 1).T
    return inverse


def rp3beta_weights(matrix, alpha: float, beta: float, top_k: int, block_size: int = 1024):
    """RP3beta item-item weights (Paudel et al. 2016, as implemented by Dacrema et al.).

    W[i, j] = sum_u P(i -> u)^alpha P(u -> j)^alpha / deg(j)^beta over the bipartite graph of
    the binary user x item matrix, where P(i -> u) = 1 / deg(i) and P(u -> j) = 1 / deg(u);
    the diagonal is zeroed and each row keeps its `top_k` largest (non-zero) entries.

    Args:
      matrix: binary user x item matrix (scipy sparse), n items.
      alpha: exponent of the transition probabilities.
      beta: popularity penalty; 0 is plain P³ random walk.
      top_k: neighbours kept per item.
      block_size: item rows computed densely at a time (memory block_size x n).

    Returns:
      W as a scipy CSR float64 [n, n].
    """
    import scipy.sparse as sp

    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    x = sp.csr_matrix(matrix, dtype=np.float64)
    x.sum_duplicates()
    x.data[:] = 1.0
    n_items = x.shape[1]
    user_degree = np.asarray(x.sum(axis=1)).ravel()
    item_degree = np.asarray(x.sum(axis=0)).ravel()
    inv_user = np.divide(1.0, user_degree, out=np.zeros_like(user_degree), where=user_degree > 0)
    inv_item = np.divide(1.0, item_degree, out=np.zeros_like(item_degree), where=item_degree > 0)
    p_ui = sp.diags(inv_user) @ x
    p_iu = (sp.diags(inv_item) @ x.T).tocsr()
    if alpha != 1.0:
        p_ui, p_iu = p_ui.power(alpha), p_iu.power(alpha)
    penalty = np.zeros(n_items)
    penalty[item_degree > 0] = item_degree[item_degree > 0] ** -float(beta)
    k = min(int(top_k), n_items)
    rows, cols, vals = [], [], []
    for start in range(0, n_items, block_size):
        stop = min(start + block_size, n_items)
        block = np.asarray((p_iu[start:stop] @ p_ui).todense()) * penalty[None, :]
        block[np.arange(stop - start), np.arange(start, stop)] = 0.0
        top = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < n_items else \
            np.broadcast_to(np.arange(n_items), block.shape)
        top_vals = np.take_along_axis(block, top, axis=1)
        keep = top_vals > 0
        rows.append(np.nonzero(keep)[0] + start)
        cols.append(top[keep])
        vals.append(top_vals[keep])
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_items, n_items),
    )


class _ItemItemPeer(GridSearchPeer):
    """Scores `X_u · W` over the modelled items (all train items unless capped)."""

    def _install(self, train: pd.DataFrame, items: pd.Index, weights) -> None:
        self._set_catalog(train)
        self._history, self._user_index, _ = binary_matrix(train, items)
        self._weights = weights
        self._model_col = items.get_indexer(self._train_items)  # -1: not modelled

    def _known_user_scores(self, users, cols):
        upos = self._user_index.get_indexer(users)
        known = upos >= 0
        # A user whose whole history lies outside the modelled items has nothing to go on.
        known[known] = self._history[upos[known]].getnnz(axis=1) > 0
        scores = np.zeros((len(users), len(cols)), dtype=np.float64)
        model_cols = self._model_col[cols]
        modelled = model_cols >= 0
        if known.any() and modelled.any():
            # Multiply first, select columns after: slicing a dense W would copy n x n.
            sub = self._history[upos[known]] @ self._weights
            sub = sub.toarray() if hasattr(sub, "toarray") else np.asarray(sub)
            scores[np.ix_(known, modelled)] = sub[:, model_cols[modelled]]
        if (~modelled).any():
            # Items left out of the model rank after every modelled one, by popularity.
            floor = scores[:, modelled].min(axis=1, keepdims=True) - 1.0 if modelled.any() \
                else np.zeros((len(users), 1))
            pop = self._popularity[cols[~modelled]]
            scores[:, ~modelled] = floor + pop / (pop.max() + 1.0)
        return scores, known


class EASE(_ItemItemPeer):
    """EASE (Steck 2019): a closed-form linear item-item model with a zero diagonal.

    Cost is O(n³) time and n² float64 of memory for n modelled items, so only the
    `max_items` most popular train items (ties by id) are modelled; the others rank after
    them by popularity. `notes` says whether the cap applied and what it kept.

    Args:
      item_ids: see `TopKPeer`.
      grid: {"l2": values} searched on validation; default λ in
        {50, 100, 200, 500, 1000, 2000} (Steck used 200-1000 on catalogs of 10-40K items).
      max_items: cap on the modelled items (default 20000: 3.2 GB for B, minutes per λ).
      **params: fixed `l2` when not tuned.

    Example:
      >>> peer = EASE(item_ids=evaluator.item_ids).fit(train, validation=val)
      >>> peer.notes  # "l2=200 chosen on validation by ndcg@10=... ; all 1573 train items ..."
    """

    name = "EASE"
    default_params = {"l2": 500.0}
    default_grid = {"l2": (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)}

    def __init__(
        self,
        item_ids: Optional[Iterable[str]] = None,
        grid: Optional[Dict[str, Sequence[float]]] = None,
        max_items: int = 20000,
        **params,
    ):
        super().__init__(item_ids, grid, **params)
        if int(max_items) < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_items = int(max_items)
        self.n_modelled = 0

    def _fit_setting(self, train, params):
        self._set_catalog(train)
        n = len(self._train_items)
        if n > self.max_items:
            # Most popular first, ties by id; the kept columns stay in id order.
            order = np.lexsort((np.arange(n), -self._popularity))[: self.max_items]
            items = self._train_items[np.sort(order)]
        else:
            items = self._train_items
        matrix, _, _ = binary_matrix(train, items)
        self.n_modelled = len(items)
        self._install(train, items, ease_weights(matrix, float(params["l2"])))

    def _setting_notes(self):
        n = len(self._train_items)
        if self.n_modelled < n:
            share = self._popularity[self._model_col >= 0].sum() / self._popularity.sum()
            return (f"item cap {self.max_items}: the {self.n_modelled} most popular of {n} train "
                    f"items modelled ({share:.1%} of interactions), the rest ranked after them "
                    f"by popularity")
        return f"all {n} train items modelled (cap {self.max_items})"


class RP3beta(_ItemItemPeer):
    """RP3beta (Paudel et al. 2016): a 3-step random walk with a popularity penalty.

    Sparse item-item weights from `rp3beta_weights`, computed in item blocks, so time and
    memory grow with the interactions and `top_k` x items rather than items².

    Args:
      item_ids: see `TopKPeer`.
      grid: default alpha {0.5, 1} x beta {0, 0.2, 0.4, 0.6, 0.8} x top_k {50, 200}, the
        region Dacrema et al.'s tuned settings mostly fall in (0.8: ml-100k chose 0.6 from a
        grid that stopped there).
      block_size: item rows per dense block while building W.
      **params: fixed alpha, beta, top_k when not tuned.

    Example:
      >>> peer = RP3beta(item_ids=evaluator.item_ids).fit(train, validation=val)
    """

    name = "RP3beta"
    default_params = {"alpha": 1.0, "beta": 0.4, "top_k": 200}
    default_grid = {"alpha": (0.5, 1.0), "beta": (0.0, 0.2, 0.4, 0.6, 0.8), "top_k": (50, 200)}

    def __init__(
        self,
        item_ids: Optional[Iterable[str]] = None,
        grid: Optional[Dict[str, Sequence[float]]] = None,
        block_size: int = 1024,
        **params,
    ):
        super().__init__(item_ids, grid, **params)
        self.block_size = int(block_size)

    def _fit_setting(self, train, params):
        self._set_catalog(train)
        matrix, _, _ = binary_matrix(train, self._train_items)
        weights = rp3beta_weights(matrix, float(params["alpha"]), float(params["beta"]),
                                  int(params["top_k"]), self.block_size)
        self._install(train, self._train_items, weights)
