"""Compare out-of-distribution scores on real photos, to pick one by measurement.

    python -m benchmarks.ood --checkpoint models/catsdogs.pt \\
        --train ../shared/data/catsdogs/train --val ../shared/data/catsdogs/val \\
        --ood ../shared/data/notpets [--features own|reference] [--cache feats.pt] [--json]

``--features`` picks what the feature-based scores read: the model's own penultimate
features, or the pretrained reference blocks stored in the checkpoint
(:func:`training.ood.reference_state`; the default when the checkpoint has them). The logit
baselines (msp, energy) always read the model's own logits.

Every score is fitted on the training photos' features only, and its threshold is placed on
the validation pets only (split-conformal, 95% accepted), exactly as :func:`training.ood.fit_ood`
does; the non-pet photos (``--ood``, one folder per category) are used for measuring alone.
Printed per method: AUROC (pets vs non-pets), false-accept rate of non-pets at that threshold
(FAR@95), a bootstrap 95% interval of both, and per-category AUROC / FAR. Then a
leave-one-category-out view: for each category, the method (and hyper-parameter) that is best
on the *other* categories, scored on the held-out one, which estimates how the choice fares on
kinds of non-pet photo nobody looked at.

``--holdout-clusters K`` adds a breed-shift proxy that needs no unseen photos: the training
photos' scored features are split into ``K`` visual clusters (spherical k-means); each
cluster in turn is left out of the photo bank, the threshold is placed on the validation
pets as usual, and the left-out cluster's photos are scored as if nobody had seen their
kind. Their accepted share says how a pet unlike the bank fares (a breed the training
photos barely hold); it is reported per cluster, for the shipped bank size and for a bank
of every training photo. Beside it, the cat/dog accuracy on the left-out cluster of a linear
probe trained on the other clusters' features (the shipped model itself has seen them all).

Both views also give the **three answers** of :mod:`training.verdict` for the shipped score
(kNN, k=10): the share answered "pet", and the share not refused ("pet" or "unsure", under the
second threshold placed at ``--refuse-tpr`` of the validation pets), per non-pet category and
per left-out cluster.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks import add_record, record
from training.ood import (
    MAX_BANK,
    REFERENCE_KEYS,
    REFUSE_TPR,
    OODScorer,
    ScoreFeatures,
    auroc,
    conformal_threshold,
    fit_ood,
    ledoit_wolf,
)

SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def folder_images(root: Path) -> list[tuple[str, Path]]:
    """``(subfolder name, file)`` for every image one level below ``root``."""
    return [(d.name, f) for d in sorted(p for p in root.iterdir() if p.is_dir())
            for f in sorted(d.iterdir()) if f.suffix.lower() in SUFFIXES]


@torch.inference_mode()
def features(model, files: list[Path], batch_size: int = 32, reference: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scored features (the model's own, or ``reference`` blocks') and the model's logits of
    ``files`` (decoded and preprocessed like everywhere else)."""
    from training.images import load_image
    from training.presets import preprocess_batch

    both = ScoreFeatures(model, reference).eval()
    feats, logits = [], []
    for i in range(0, len(files), batch_size):
        x = torch.from_numpy(preprocess_batch([load_image(f, min_side=256) for f in files[i:i + batch_size]]))
        own, scored = both(x)
        feats.append(scored.float())
        logits.append(model.head(own).float())
    return torch.cat(feats), torch.cat(logits)


def research_scores(tr, ytr, head):
    """Scores not kept in training.ood (raw-feature and relative Mahalanobis, ViM): name -> fn(f, logits)."""
    tr = tr.double()
    classes = ytr.unique()
    means = torch.stack([tr[ytr == c].mean(0) for c in classes])
    cov, shrink = ledoit_wolf(tr - means[torch.searchsorted(classes, ytr)])
    prec = torch.linalg.inv(cov)
    # The background Gaussian gets the same shrinkage: with its own (smaller) Ledoit-Wolf
    # value its weakest directions dominate and the relative score inverts (AUROC ~0.05).
    g = tr.mean(0)
    cov0 = (tr - g).T @ (tr - g) / len(tr)
    prec0 = torch.linalg.inv((1 - shrink) * cov0 + shrink * torch.trace(cov0) / len(cov0) * torch.eye(len(cov0), dtype=cov0.dtype))

    def maha(f):
        d = f.double()[:, None] - means[None]
        return torch.einsum("nkd,de,nke->nk", d, prec, d)

    def relative(f):  # Ren et al. 2021: class distance minus a class-agnostic background distance
        d0 = f.double() - g
        return (maha(f) - torch.einsum("nd,de,ne->n", d0, prec0, d0)[:, None]).min(1).values

    # ViM (Wang et al. 2022): norm of the feature outside the top-256 principal subspace,
    # scaled to the logits, against the energy.
    w, b = head.weight.double(), head.bias.double()
    u = -torch.linalg.pinv(w) @ b
    eigvec = torch.linalg.eigh((tr - u).T @ (tr - u) / len(tr))[1]
    null = eigvec[:, : tr.shape[1] - 256]
    alpha = (tr @ w.T + b).max(1).values.mean() / ((tr - u) @ null).norm(dim=1).mean()

    def vim(f, logits):
        return alpha * ((f.double() - u) @ null).norm(dim=1) - torch.logsumexp(logits.double(), 1)

    return {
        "mahalanobis-raw": lambda f, _logits: maha(f).min(1).values,
        "relative-mahalanobis": lambda f, _logits: relative(f),
        "vim[256]": vim,
        "feature-norm": lambda f, _logits: -f.norm(dim=1),
    }


def compare(tr, ytr, va, va_logits, od, od_logits, cats: list[str], head, target_tpr=0.95, boot=200) -> dict:
    """Every method's scores on val (pets) and ood (non-pets), and the metrics."""
    scorers = {}
    for method in ("msp", "energy", "mahalanobis"):
        scorers[method] = OODScorer(fit_ood(tr, ytr, va, method=method, val_logits=va_logits, target_tpr=target_tpr))
    for k in (1, 5, 10, 20, 50):
        scorers[f"knn[{k}]"] = OODScorer(fit_ood(tr, ytr, va, method="knn", k=k, target_tpr=target_tpr))
    scores = {name: (s(va, va_logits), s(od, od_logits)) for name, s in scorers.items()}
    for name, fn in research_scores(tr, ytr, head).items():
        scores[name] = (fn(va, va_logits), fn(od, od_logits))
    cat_idx = {c: torch.tensor([i for i, x in enumerate(cats) if x == c]) for c in sorted(set(cats))}
    g = torch.Generator().manual_seed(0)
    table = {}
    for name, (v, o) in scores.items():
        thr = conformal_threshold(v, target_tpr)
        far = lambda oo, thr=thr: float((oo <= thr).double().mean())
        boots = []
        for _ in range(boot):
            vi, oi = torch.randint(len(v), (len(v),), generator=g), torch.randint(len(o), (len(o),), generator=g)
            t = conformal_threshold(v[vi], target_tpr)
            boots.append((auroc(v[vi], o[oi]), float((o[oi] <= t).double().mean())))
        bt = torch.tensor(boots, dtype=torch.float64) if boots else None
        ci = lambda col, bt=bt, boots=boots: bt[:, col].quantile(torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist() if boots else None
        table[name] = {
            "auroc": auroc(v, o), "far": far(o), "tar": float((v <= thr).double().mean()),
            "auroc_ci": ci(0),
            "far_ci": ci(1),
            "per_category": {c: {"auroc": auroc(v, o[ix]), "far": far(o[ix])} for c, ix in cat_idx.items()},
        }
    return {"methods": table, "loco": leave_one_category_out(scores, cat_idx, target_tpr)}


def three_answers(val_scores, ood_scores, cats: list[str], target_tpr: float, refuse_tpr: float) -> dict:
    """Per non-pet category (and the validation pets): how many get each answer of
    :mod:`training.verdict` when both thresholds are placed on ``val_scores``."""
    threshold, refuse = conformal_threshold(val_scores, target_tpr), conformal_threshold(val_scores, refuse_tpr)
    groups = {"val pets": val_scores} | {c: ood_scores[torch.tensor([x == c for x in cats])] for c in sorted(set(cats))}
    return {name: {"photos": len(v), "pet": int((v <= threshold).sum()),
                   "unsure": int(((v > threshold) & (v <= refuse)).sum()), "not_pet": int((v > refuse).sum())}
            for name, v in groups.items()}


def leave_one_category_out(scores, cat_idx, target_tpr) -> dict:
    """For each family (and all together): pick on the other categories, score the held-out one."""
    families = {"all": list(scores), "logit (msp/energy)": ["msp", "energy"],
                "knn": [n for n in scores if n.startswith("knn")]}
    out = {}
    for family, names in families.items():
        n_all, au_sum, far_sum, picks = 0, 0.0, 0.0, {}
        for c, ix in cat_idx.items():
            rest = torch.cat([j for d, j in cat_idx.items() if d != c])
            best = max(names, key=lambda n: auroc(scores[n][0], scores[n][1][rest]))
            v, o = scores[best]
            thr = conformal_threshold(v, target_tpr)
            au, far = auroc(v, o[ix]), float((o[ix] <= thr).double().mean())
            picks[c] = {"method": best, "auroc": au, "far": far}
            au_sum, far_sum, n_all = au_sum + au * len(ix), far_sum + far * len(ix), n_all + len(ix)
        out[family] = {"auroc": au_sum / n_all, "far": far_sum / n_all, "held_out": picks}
    return out


def spherical_kmeans(x: torch.Tensor, k: int, iters: int = 50, seed: int = 0) -> torch.Tensor:
    """Cluster index of each row of ``x`` by cosine similarity (k-means++ seeding)."""
    z = torch.nn.functional.normalize(x.double(), dim=1)
    g = torch.Generator().manual_seed(seed)
    centres = z[torch.randint(len(z), (1,), generator=g)]
    while len(centres) < k:  # k-means++: far points are likelier picks
        d = (1 - z @ centres.T).min(1).values.clamp_min(0)
        centres = torch.cat([centres, z[torch.multinomial(d / d.sum(), 1, generator=g)]])
    for _ in range(iters):
        assign = (z @ centres.T).argmax(1)
        new = torch.stack([z[assign == c].sum(0) if (assign == c).any() else centres[c] for c in range(k)])
        new = torch.nn.functional.normalize(new, dim=1)
        if torch.allclose(new, centres):
            break
        centres = new
    return (z @ centres.T).argmax(1)


def probe_accuracy(x_train, y_train, x_test, y_test, weight_decay: float = 1e-3) -> float:
    """Accuracy on ``x_test`` of an L2-regularised logistic regression fitted on the rest."""
    mu, sd = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    xt, xe = ((x_train - mu) / sd).double(), ((x_test - mu) / sd).double()
    classes = int(y_train.max()) + 1
    w = torch.zeros(xt.shape[1], classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xt @ w + b, y_train) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return float(((xe @ w + b).argmax(1) == y_test).double().mean())


def held_out_clusters(tr, ytr, va, od, labels: list[str], k_clusters: int, target_tpr: float = 0.95,
                      boot: int = 200, seed: int = 0, refuse_tpr: float = REFUSE_TPR) -> dict:
    """The breed-shift proxy (module docstring): per bank size, per cluster, the left-out
    photos' accepted share (bootstrap 95% interval), their share not refused (the middle
    answer counting, :mod:`training.verdict`) and the non-pets accepted / not refused meanwhile."""
    assign = spherical_kmeans(tr, k_clusters, seed=seed)
    g = torch.Generator().manual_seed(seed)
    out = {"clusters": k_clusters, "banks": {}}

    def ci(hits: torch.Tensor) -> list[float] | None:  # bootstrap 95% interval of a share
        if not boot:
            return None
        draws = hits[torch.randint(len(hits), (boot, len(hits)), generator=g)].mean(1)
        return [float(q) for q in draws.quantile(torch.tensor([0.025, 0.975], dtype=torch.float64))]

    probe = {c: probe_accuracy(tr[assign != c], ytr[assign != c], tr[assign == c], ytr[assign == c])
             for c in range(k_clusters)}
    for bank in sorted({MAX_BANK, len(tr)}):  # the shipped bank size, and every photo
        rows = []
        for c in range(k_clusters):
            held = assign == c
            state = fit_ood(tr[~held], ytr[~held], va, target_tpr=target_tpr, refuse_tpr=refuse_tpr,
                            max_bank=bank, seed=seed)
            scorer = OODScorer(state)
            left_out = scorer(tr[held].float(), torch.zeros(int(held.sum()), 1))
            others = scorer(od.float(), torch.zeros(len(od), 1))
            accepted = (left_out <= state["threshold"]).double()
            not_refused = (left_out <= state["refuse_threshold"]).double()
            mix = {labels[i]: int((ytr[held] == i).sum()) for i in range(len(labels))}
            rows.append({"cluster": c, "photos": int(held.sum()), "classes": mix, "probe_accuracy": probe[c],
                         "accepted": float(accepted.mean()), "accepted_ci": ci(accepted),
                         "not_refused": float(not_refused.mean()), "not_refused_ci": ci(not_refused),
                         "non_pets_accepted": float((others <= state["threshold"]).double().mean()),
                         "non_pets_not_refused": float((others <= state["refuse_threshold"]).double().mean())})
        mean = lambda key, rows=rows: sum(r[key] for r in rows) / len(rows)
        out["banks"][bank] = {"rows": rows, "worst": min(r["accepted"] for r in rows), "mean": mean("accepted"),
                              "worst_not_refused": min(r["not_refused"] for r in rows),
                              "mean_not_refused": mean("not_refused"),
                              "non_pets_accepted_mean": mean("non_pets_accepted"),
                              "non_pets_not_refused_mean": mean("non_pets_not_refused")}
    return out


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Compare OOD scores: pets (val) vs non-pet photos", add_help=add_help)
    parser.add_argument("--checkpoint", required=True, help="model checkpoint (.pt)")
    parser.add_argument("--train", required=True, help="training photos, one folder per class")
    parser.add_argument("--val", required=True, help="validation photos, one folder per class (threshold)")
    parser.add_argument("--ood", required=True, help="non-pet photos, one folder per category")
    parser.add_argument("--features", choices=("own", "reference"), default=None,
                        help="features to score: the model's own or the checkpoint's pretrained reference blocks "
                             "(default: reference when the checkpoint has them)")
    parser.add_argument("--cache", default=None, help="save/load the features here (skips re-embedding)")
    parser.add_argument("--target-tpr", type=float, default=0.95, help="share of validation pets accepted")
    parser.add_argument("--refuse-tpr", type=float, default=REFUSE_TPR,
                        help="share of validation pets not refused (the middle answer's threshold, training.verdict)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals (0: none)")
    parser.add_argument("--holdout-clusters", type=int, default=0, metavar="K",
                        help="also the breed-shift proxy: leave each of K visual clusters of the training photos "
                             "out of the bank and report how many of its photos are still accepted (0: skip)")
    parser.add_argument("--json", action="store_true", help="print the full result as one JSON line")
    return add_record(parser)


def main(args: argparse.Namespace) -> dict:
    from training.checkpoint import load_checkpoint, read_checkpoint

    model, labels = load_checkpoint(args.checkpoint)
    stored = (read_checkpoint(args.checkpoint).get("extra") or {}).get("ood") or {}
    reference = {k: stored[k] for k in REFERENCE_KEYS if k in stored}
    if args.features == "reference" and not reference:
        raise SystemExit("error: this checkpoint has no reference blocks; add them with "
                         "`python -m training.calibrate --checkpoint C --data DIR --weights imagenet|PATH`")
    if args.features == "own":
        reference = {}
    which = f"reference blocks from {reference['reference_from']}" if reference else "own"
    sets = {name: folder_images(Path(getattr(args, name))) for name in ("train", "val", "ood")}
    if args.cache and Path(args.cache).is_file():
        cached = torch.load(args.cache, weights_only=True)
        if cached.get("features") != which:
            raise SystemExit(f"error: {args.cache} holds {cached.get('features')!r} features, not {which!r}; use another --cache")
    else:
        cached = {name: features(model, [f for _, f in items], reference=reference) for name, items in sets.items()}
        cached["features"] = which
        if args.cache:
            torch.save(cached, args.cache)
    (tr, _), (va, va_logits), (od, od_logits) = cached["train"], cached["val"], cached["ood"]
    ytr = torch.tensor([labels.index(c) for c, _ in sets["train"]])
    with torch.no_grad():
        cats = [c for c, _ in sets["ood"]]
        result = compare(tr, ytr, va, va_logits, od, od_logits, cats, model.head[-1], args.target_tpr, args.bootstrap)
        shipped = OODScorer(fit_ood(tr, ytr, va, target_tpr=args.target_tpr, refuse_tpr=None))
        zeros = lambda x: torch.zeros(len(x), 1)
        result["three_answers"] = three_answers(shipped(va, zeros(va)), shipped(od, zeros(od)), cats,
                                                args.target_tpr, args.refuse_tpr)
        if args.holdout_clusters:
            result["held_out_clusters"] = held_out_clusters(tr, ytr, va, od, labels, args.holdout_clusters,
                                                            args.target_tpr, args.bootstrap, refuse_tpr=args.refuse_tpr)
    record("ood", result, args)
    if args.json:
        print(json.dumps(result))
        return result
    cats = sorted(next(iter(result["methods"].values()))["per_category"])
    print(f"{len(va)} val pets vs {len(od)} non-pets; {which} features; "
          f"threshold accepts {args.target_tpr:.0%} of val (conformal)")
    print(f"{'method':22s} {'AUROC':>6s} {'95% CI':>13s} {'FAR@95':>7s} {'95% CI':>13s}   per category AUROC / FAR: "
          + " ".join(c[:9] for c in cats))
    for name, m in result["methods"].items():
        per = " ".join(f"{m['per_category'][c]['auroc']:.2f}/{m['per_category'][c]['far']:.2f}" for c in cats)
        ci = lambda c: f"[{c[0]:.3f},{c[1]:.3f}]" if c else " " * 13
        print(f"{name:22s} {m['auroc']:6.3f} {ci(m['auroc_ci'])} {m['far']:7.3f} {ci(m['far_ci'])}   {per}")
    print("leave-one-category-out (pick on the other categories, score the held-out one):")
    for family, r in result["loco"].items():
        picks = ", ".join(f"{c}:{p['method']}" for c, p in r["held_out"].items())
        print(f"  {family:20s} AUROC {r['auroc']:.3f}  FAR@95 {r['far']:.3f}   ({picks})")
    print(f"three answers, knn[10] (pet up to the {args.target_tpr:.0%} threshold, unsure up to the "
          f"{args.refuse_tpr:.0%} one, then not a pet):")
    for name, n in result["three_answers"].items():
        print(f"  {name:12s} {n['photos']:4d} photos: pet {n['pet']:4d}  unsure {n['unsure']:4d}  not a pet {n['not_pet']:4d}")
    if held := result.get("held_out_clusters"):
        print(f"held-out visual clusters of the training photos ({held['clusters']}; knn[10], threshold on val):")
        pct = lambda ci: f" [{ci[0]:.0%}, {ci[1]:.0%}]" if ci else ""
        for bank, b in held["banks"].items():
            print(f"  bank of {bank}: accepted worst {b['worst']:.1%}, mean {b['mean']:.1%}; not refused worst "
                  f"{b['worst_not_refused']:.1%}, mean {b['mean_not_refused']:.1%}; non-pets accepted "
                  f"{b['non_pets_accepted_mean']:.1%}, not refused {b['non_pets_not_refused_mean']:.1%} on average")
            for r in b["rows"]:
                mix = " + ".join(f"{n} {name}s" for name, n in r["classes"].items())
                print(f"    cluster {r['cluster']:2d} ({mix}): {r['accepted']:.1%}{pct(r['accepted_ci'])} accepted, "
                      f"{r['not_refused']:.1%}{pct(r['not_refused_ci'])} not refused; non-pets "
                      f"{r['non_pets_accepted']:.1%} / {r['non_pets_not_refused']:.1%}; "
                      f"probe cat/dog accuracy {r['probe_accuracy']:.1%}")
    return result


def cli() -> None:
    main(get_args_parser().parse_args())


if __name__ == "__main__":
    cli()
