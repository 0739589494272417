"""`python -m pipeline <command>`: the platform's operations from a shell.

Every ML setting comes from params.yaml; `--set section.key=value` overrides it for one run.
Endpoints come from the environment (MLFLOW_TRACKING_URI, XRAY_CACHE_DIR, ...; see docs/configuration.md).
Each command imports the stages it runs when it runs (torch, MLflow): `--help` and a settings error
answer at once.
"""
from __future__ import annotations

import argparse
import getpass
import datetime as dt
import json
import sys
from pathlib import Path

from pipeline.mlops import server
from pipeline.settings import config
from pipeline.settings.params import Params
from pipeline.data.dataset import DatasetError
from pipeline.data.preprocess import InvalidImage

EPILOG = """examples:
  python -m pipeline validate --data ../shared/datasets/chest_xray
  python -m pipeline train --set train.epochs=2 --set preprocess.image_size=128
  python -m pipeline evaluate --model runs/latest/model.pt
  python -m pipeline predict --model runs/latest/model.pt xray1.jpeg xray2.png
  python -m pipeline status
  python -m pipeline history --at 2026-03-03T14:30      (which version served then, who approved it)
  python -m pipeline site import --data confirmed/     (folders NORMAL/ and PNEUMONIA/)
  python -m pipeline site adapt
"""


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--params", type=Path, default=config.PARAMS_FILE, help="params file (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a parameter, e.g. --set train.epochs=3 (repeatable)")
    if data:
        p.add_argument("--data", type=Path, default=None,
                       help="dataset folder <root>/[train|val|test/]NORMAL|PNEUMONIA/ "
                            "(default: $XRAY_DATA, $DATA or ../shared/datasets/chest_xray)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("validate", help="check every image; print and save the validation report",
                       description="Decode every image once (filling the preprocessing cache) and report "
                                   "the files that cannot be used, with the reason. Exit 1 if the dataset is unusable.")
    _common(p)
    p.add_argument("--report", type=Path, help="write the JSON report here")

    p = sub.add_parser("train", help="train a ResNet18 challenger and score it on the held-out set",
                       description="Validate, split by patient, train, choose the threshold on validation and "
                                   "score the held-out test split. Outputs go to --out.")
    _common(p)
    p.add_argument("--out", type=Path, help="output folder (default: $XRAY_RUNS_DIR/<timestamp>)")
    p.add_argument("--mlflow", action="store_true",
                   help="log the run to MLflow ($MLFLOW_TRACKING_URI) and register a model version")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")

    p = sub.add_parser("evaluate", help="score a trained model on the held-out split of a dataset",
                       description="Score a model.pt (or models:/<name>@<alias>) at its stored threshold "
                                   "on a split of the dataset, re-split exactly as training does.")
    _common(p)
    p.add_argument("--model", required=True, help="model.pt path or models:/<name>@<alias>")
    p.add_argument("--split", choices=["train", "val", "test", "external", "golden"], default="test")
    p.add_argument("--out", type=Path, help="write metrics JSON here (and plots beside it)")

    p = sub.add_parser("predict", help="classify X-ray files (JPEG, PNG, DICOM)",
                       description="Print label, P(pneumonia) and threshold for each file as JSON lines.")
    p.add_argument("--model", required=True, help="model.pt path or models:/<name>@<alias>")
    p.add_argument("files", nargs="+", type=Path)

    for name, text in (("promote", "make a registered version the champion (a person decides; --evaluate applies the policy)"),
                       ("rollback", "move the champion alias back to previous_champion"),
                       ("status", "show which version serves and why")):
        p = sub.add_parser(name, help=text, description=text, formatter_class=argparse.RawDescriptionHelpFormatter)
        _common(p, data=False)
        if name == "promote":
            p.add_argument("version", type=int, nargs="?",
                           help="registered model version to promote (default: the current challenger)")
            p.add_argument("--reason", default="manual promotion", help="recorded on the version")
        add_arguments(name, p)

    p = sub.add_parser("history", help="the audit trail of the model's aliases: who moved which version, when, why",
                       description="Every alias move (promotion, manual promotion, rollback, site adaptation, "
                                   "challenger) and rejection, oldest first; --at: which version served then and who "
                                   "approved it (pipeline.mlops.audit).")
    _common(p, data=False)
    p.add_argument("--name", "--model", dest="model", default=None,
                   help="registered model name (default: params / $XRAY_MODEL_NAME)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--at", metavar="DATE", help="ISO date or date-time, UTC when no zone (e.g. 2026-03-03T14:30)")
    p.add_argument("--limit", type=int, default=50, metavar="N", help="the last N entries (default %(default)s; 0: all)")

    p = sub.add_parser("reexport", help="register an old version again with the files the site serves from",
                       description="A version registered before the torch-free serving tier (no serving.json, or "
                                   "an ONNX file without the heat-map output) is refused by the site. This registers "
                                   "its checkpoint again as a new version with those files (pipeline.mlops.reexport).")
    _common(p)
    p.add_argument("version", type=int, help="the registered version to re-export")
    p.add_argument("--promote", action="store_true", help="move the champion alias to the copy when the version is champion")
    p.add_argument("--name", "--model", dest="model", default=None,
                   help="registered model name (default: params / $XRAY_MODEL_NAME)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")

    p = sub.add_parser("site", add_help=False, help="the site's confirmed cases: import labelled films "
                       "(site import --data DIR), fit and serve the site's operating point (site adapt)")
    p.add_argument("site_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["site"]:  # its options are the Django command's (argparse would take --help)
        return cmd_site(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        params = config.load_params(getattr(args, "params", None), getattr(args, "overrides", []))
    except config.ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data_root = getattr(args, "data", None) or config.default_data_root()
    try:
        return COMMANDS[args.command](args, params, data_root) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one clear line for operators; the traceback is for --debug sessions
        if isinstance(exc, (DatasetError, InvalidImage, FileNotFoundError, RuntimeError, KeyError, ValueError)):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise


def cmd_site(site_args: list[str]) -> int:
    """Runs in the site's Django, whose database holds the confirmed cases (the command itself:
    django_app/diagnosis/management/commands/site.py); the same settings as the site (DATABASE_URL,
    MLFLOW_TRACKING_URI, XRAY_PARAMS)."""
    import os

    from django.core.management import ManagementUtility

    sys.path.insert(0, str(Path(os.environ.get("XRAY_REPO") or config.REPO_ROOT) / "django_app"))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "xray_site.settings")
    try:
        ManagementUtility(["python -m pipeline", "site", *site_args]).execute()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def cmd_validate(args, params, data_root) -> int:
    from pipeline.data import training_data

    _, report = training_data.prepare(data_root, params)   # golden set verified, its patients dropped
    print(report.summary())
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        report.save(args.report)
    return 0


def cmd_train(args, params, data_root) -> int:
    from pipeline.mlops import loading, tracking
    from pipeline.training.train import train

    out = args.out or config.runs_dir() / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    if args.mlflow:
        result = tracking.tracked_train(params, data_root, out)
        print(json.dumps(result, indent=2, default=str))
        return 0
    result = train(params, data_root, out, progress=not args.no_progress, init=loading.warm_start(params))
    _link_latest(out)
    print(json.dumps({"checkpoint": str(result.checkpoint), "metrics": result.metrics,
                      "wall_time_s": result.system["wall_time_s"]}, indent=2))
    return 0


def _link_latest(out: Path) -> None:
    latest = out.parent / "latest"
    if latest.is_symlink() or not latest.exists():
        latest.unlink(missing_ok=True)
        latest.symlink_to(out.name)


def load_predictor(model: str):
    from pipeline.inference.predict import Predictor
    from pipeline.mlops import loading

    return Predictor.from_checkpoint(loading.resolve_model(model))


def cmd_evaluate(args, params, data_root) -> int:
    """Held-out figures, the stress table (same patients under every shift) and any external set;
    --split val|train scores another split in distribution only."""
    from pipeline.data import training_data
    from pipeline.evaluation import evaluate, quality, stress

    predictor = load_predictor(args.model)
    splits, _, cache = training_data.load(data_root, params)
    if args.split != "test":
        samples = dict(splits.items())[args.split]
        y, p = evaluate.predict_samples(predictor, samples, params, cache)
        metrics = evaluate.compute_metrics(y, p, predictor.threshold)
        print(json.dumps(metrics, indent=2))
        plots = lambda out: evaluate.save_plots(y, p, predictor.threshold, [], out)  # noqa: E731
    else:
        scored = quality.score(predictor, splits, params, cache)
        metrics = quality.flat_metrics(scored)
        t = scored["test"]
        print(f"held-out ({t['n']} images): AUC {t['auc']:.4f}  sensitivity {t['sensitivity']:.3f}  specificity "
              f"{t['specificity']:.3f}  at threshold {predictor.threshold:.3f}  ECE {t['ece']:.3f}  Brier {t['brier']:.3f}")
        print(f"stress ({scored['stress']['n']} held-out images x {scored['stress']['shifts']} shifts):")
        print(stress.format_table(scored["stress"]))
        for name in ("external", "golden"):
            if scored[name]:
                e = scored[name]
                print(f"{name} ({e['n']} images): AUC {e['auc']:.4f}  sensitivity {e['sensitivity']:.3f}  "
                      f"specificity {e['specificity']:.3f}  ECE {e['ece']:.3f}")
        probs = scored["probs"]["test"]
        plots = lambda out: evaluate.save_plots(probs["y"], probs["p"], predictor.threshold, [], out)  # noqa: E731
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        evaluate.save_metrics(metrics, args.out)
        plots(args.out.parent / "plots")
    return 0


def cmd_predict(args, params, data_root) -> int:
    from pipeline.inference.answer import answer_file

    predictor = load_predictor(args.model)
    failed = 0
    for path in args.files:
        try:
            print(json.dumps({"file": str(path), **answer_file(path, predictor).prediction.to_dict()}))
        except InvalidImage as exc:
            failed += 1
            print(json.dumps({"file": str(path), "error": exc.reason}))
    return 1 if failed else 0


# ----------------------------------------------------------------------------- registry commands
def add_arguments(command: str, parser) -> None:
    """Optional extra arguments of `python -m pipeline promote|rollback|status`."""
    parser.add_argument("--model", default=None, help="registered model name (default: params / $XRAY_MODEL_NAME)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    if command == "promote":
        parser.add_argument("--evaluate", action="store_true",
                            help="score the version and the champion now on the held-out split of --data and "
                                 "apply the params.yaml promotion policy (default: a person promotes, no checks)")
        parser.add_argument("--data", default=None, help="dataset for --evaluate (default: $XRAY_DATA/$DATA)")
    if command == "rollback":
        parser.add_argument("--reason", default="manual rollback", help="why (stored on the version)")


def _print(obj: dict, as_json: bool, text: str) -> None:
    print(json.dumps(obj, indent=2, default=str) if as_json else text)


def cmd_promote(args, params: Params | None = None, data_root=None) -> int:
    """Exit 0: promoted (or already champion); 2: the policy rejected it / the decision was stale /
    the version failed the serving check.

    Without --evaluate a person decides: the version becomes champion once it passes
    serving_check (tag decision=promoted_manually, with --reason). With --evaluate the policy decides, as in the DAG.
    """
    from pipeline.mlops import aliases, candidates, loading, policy

    params = params if params is not None else config.load_params(getattr(args, "params", None),
                                                                 getattr(args, "overrides", None) or ())
    name = getattr(args, "model", None) or server.model_name(params)
    client = server.connect(server.check_server())
    version = getattr(args, "version", None) or server.alias_version(client, name, server.CHALLENGER)
    if version is None:
        raise SystemExit(f"no version given and '{name}' has no '{server.CHALLENGER}' alias")
    as_json = getattr(args, "json", False)
    reason = getattr(args, "reason", None)
    if not getattr(args, "evaluate", False):
        # A person may overrule the comparison with the champion, never the serving check: a model
        # that does not load or answers NaN would only be refused by the web app (or worse, served).
        problems = loading.serving_check(version, name)
        if problems:
            _print({"promoted": False, "version": int(version), "problems": problems}, as_json,
                   f"v{version}: NOT promoted -- " + "; ".join(problems))
            return 2
        reason = reason if reason and reason != "manual promotion" else "manual promotion"
        result = aliases.promote(version, {"reason": f"{reason} (by {getpass.getuser()})", "decided_at": server.now()},
                         name=name, force=True)
        _print(result, as_json, f"v{version}: {'now champion' if result['promoted'] else 'unchanged'} -- "
                                f"{result['reason']}; previous_champion: v{result.get('previous_champion')}")
        return 0
    data = Path(getattr(args, "data", None) or config.default_data_root())
    scores = candidates.evaluate_candidates(version, config.apply_overrides(params, {"registry.model_name": name}), data)
    decision = policy.decide(scores, params)
    if reason and reason != "manual promotion":
        decision["reason"] = f"{decision['reason']} ({reason})"
    result = aliases.promote(version, decision, name=name) if decision["promote"] else aliases.reject(version, decision, name=name)
    verdict = "promoted" if result["promoted"] else ("stale" if result.get("stale") else "rejected")
    _print({"decision": decision, "result": result}, as_json, f"v{version}: {verdict} -- {result['reason']}")
    return 0 if result["promoted"] else 2


def cmd_rollback(args, params: Params | None = None, data_root=None) -> int:
    from pipeline.mlops import aliases

    name = getattr(args, "model", None) or (server.model_name(params) if params is not None else None)
    try:
        result = aliases.rollback(name=name, reason=getattr(args, "reason", None) or "manual rollback")
    except server.PromotionError as exc:
        print(f"rollback: {exc}")
        return 2
    _print(result, getattr(args, "json", False),
           f"champion is now v{result['champion']} (rolled back from v{result['rolled_back_from']}); "
           f"previous_champion: {'v' + str(result['previous_champion']) if result['previous_champion'] else 'none'}")
    return 0


def cmd_reexport(args, params: Params, data_root=None) -> int:
    """Exit 0: re-exported (and promoted when asked and allowed); 2: re-exported, not promoted."""
    from pipeline.mlops.reexport import reexport

    data = Path(data_root) if data_root and Path(data_root).is_dir() else None  # real X-rays check the export
    out = reexport(args.version, params, data, promote=args.promote, name=args.model)
    _print(out, args.json, f"v{out['version']} -> v{out['reexported_as']}: {out['reason']}")
    return 2 if args.promote and not out["promoted"] else 0


def format_status(st: dict) -> str:
    lines = [f"model {st['model_name']} at {st['tracking_uri']}"]
    for role in (server.CHAMPION, server.PREVIOUS, server.CHALLENGER):
        d = st[role]
        if d is None:
            lines.append(f"  {role:<18} none")
            continue
        auc = d["scores"].get("challenger.auc", d["scores"].get("test.auc"))
        lines.append(f"  {role:<18} v{d['version']}  auc {'?' if auc is None else f'{auc:.4f}'}  "
                     f"data {d['data_version'] or '?'}  "
                     f"{d['decision'] or 'undecided'}: {d['reason'] or ''}")
    lines.append("  recent versions:")
    for v in st["versions"]:
        lines.append(f"    v{v['version']:<4} {','.join(v['aliases']) or '-':<28} {v['decision']}: {v['reason']}")
    return "\n".join(lines)


def cmd_status(args, params: Params | None = None, data_root=None) -> int:
    from pipeline.mlops import versions

    name = getattr(args, "model", None) or (server.model_name(params) if params is not None else None)
    st = versions.status(name=name)
    _print(st, getattr(args, "json", False), format_status(st))
    return 0


def cmd_history(args, params: Params | None = None, data_root=None) -> int:
    """Exit 0: answered; 1: no entry answers (none recorded, or none that early); 2: bad --at."""
    from pipeline.mlops import audit

    name = getattr(args, "model", None) or server.model_name(params)
    try:
        audit.parse_time(args.at) if args.at else None
    except ValueError:
        print(f"error: --at {args.at!r} is not an ISO date or date-time (e.g. 2026-03-03, 2026-03-03T14:30, "
              f"2026-03-03T14:30+01:00)", file=sys.stderr)
        return 2
    uri = server.check_server()
    client = server.connect(uri)
    try:
        if args.at:
            answer = audit.ask(client, name, args.at)
            _print(answer, args.json, audit.format_served(answer))
            return 0
        entries = audit.timeline(client, name)
        if not entries:
            raise audit.NoAuditEntry(f"no audit entry for '{name}' on {uri} (experiment "
                                     f"{audit.experiment_name(name)}): no alias has moved since the trail exists")
    except audit.NoAuditEntry as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    shown = entries[-args.limit:] if args.limit > 0 else entries
    _print({"model": name, "tracking_uri": uri, "total": len(entries), "entries": shown}, args.json,
           audit.format_timeline(shown, total=len(entries)))
    return 0


COMMANDS = {"validate": cmd_validate, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict,
            "promote": cmd_promote, "rollback": cmd_rollback, "status": cmd_status, "history": cmd_history,
            "reexport": cmd_reexport}
