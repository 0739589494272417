"""`python -m pipeline site import|adapt` (= `manage.py site ...`): the site's confirmed cases.

import --data DIR   films with confirmed diagnoses, DIR/NORMAL and DIR/PNEUMONIA (JPEG, PNG, DICOM),
                    recorded as confirmed local cases through the upload path (diagnosis.local_cases)
adapt               fit the site's calibration and threshold on the confirmed cases and, when the
                    checks pass, serve it as a new champion version (pipeline.mlops.site_version)
"""
from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from diagnosis import local_cases


class Command(BaseCommand):
    help = "The site's confirmed cases: import labelled films, adapt the served operating point."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        imp = sub.add_parser("import", help="record a folder NORMAL/ PNEUMONIA/ of confirmed films")
        imp.add_argument("--data", required=True, type=Path)
        imp.add_argument("--json", action="store_true")
        exp = sub.add_parser("export", help="write the confirmed cases into the dataset and publish a data version")
        exp.add_argument("--data", type=Path, help="dataset folder (default: the repository's DVC data folder)")
        exp.add_argument("--no-publish", action="store_true", help="write the files only (no dvc add / push)")
        exp.add_argument("--json", action="store_true")
        ada = sub.add_parser("adapt", help="fit the site's calibration and threshold; serve it if it is better")
        ada.add_argument("--dry-run", action="store_true", help="fit and check, register nothing")
        ada.add_argument("--json", action="store_true")

    def handle(self, *args, action: str, **options):
        if action == "import":
            return self._import(options["data"], options["json"])
        if action == "export":
            return self._export(options["data"], not options["no_publish"], options["json"])
        return self._adapt(options["dry_run"], options["json"])

    def _export(self, data: Path | None, publish: bool, as_json: bool) -> None:
        """Local cases into the next DVC data version; publishing announces the data Asset, which
        starts retraining (pipeline.data.versioning)."""
        from pipeline.data import versioning

        root = data or versioning.data_root()
        out = local_cases.export(root)
        if publish:
            try:
                version = versioning.publish(message=f"data: the site's confirmed cases ({out['written']})")
            except versioning.VersioningError as exc:
                raise CommandError(f"files written to {root}, but not published: {exc}") from None
            out["data_version"], out["announced"] = version.hash, versioning.announce(version)
        if as_json:
            self.stdout.write(json.dumps(out, indent=2, default=str))
            return
        w = out["written"]
        self.stdout.write(f"{root}: local/ (evaluation) {w['local']}, train/ {w['train']}; {out['removed']} removed"
                          + (f"; data version {out['data_version'][:8]}, retraining "
                             f"{'announced' if out['announced'] else 'at the next daily run'}" if publish else ""))

    def _champion(self):
        from diagnosis.champion import holder

        hold = holder()
        champion = hold.get()
        if champion is None:
            raise CommandError(f"no champion to analyse the films with: {hold.status().get('error') or 'none loaded'}")
        return champion

    def _import(self, data: Path, as_json: bool) -> None:
        if not data.is_dir():
            raise CommandError(f"--data {data}: not a folder")
        champion = self._champion()
        try:
            report = local_cases.import_folder(data, champion)
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from None
        if as_json:
            self.stdout.write(json.dumps(report.to_dict(), indent=2))
            return
        by = {lab: sum(1 for _, l, _ in report.recorded if l == lab) for lab in local_cases.CLASS_DIRS}
        self.stdout.write(f"recorded {len(report.recorded)} confirmed films with model v{champion.version} "
                          f"({', '.join(f'{n} {lab}' for lab, n in by.items())}); "
                          f"{len(report.already)} imported before; {len(report.refused)} refused")
        for name, reason in report.refused:
            self.stdout.write(f"  refused {name}: {reason}")
        total = len(local_cases.cases())
        self.stdout.write(f"{total} confirmed local cases in all; next: python -m pipeline site adapt")

    def _adapt(self, dry_run: bool, as_json: bool) -> None:
        from pipeline.mlops import server, site_version

        params = settings.XRAY_PIPELINE_PARAMS
        cases = local_cases.cases(images=True)   # cases answered by other weights are rescored from their films
        try:
            out = site_version.adapt(cases, params, name=settings.XRAY_MODEL_NAME, rescore=self._rescore,
                                     dry_run=dry_run)
        except (server.NoChampion, server.TrackingServerUnavailable) as exc:
            raise CommandError(str(exc)) from None
        if as_json:
            self.stdout.write(json.dumps(server.jsonable(out), indent=2))
            return
        self.stdout.write(format_adapt(out))

    def _rescore(self, cases) -> list[float]:
        """Logits of the champion for cases another network answered: their stored images again."""
        from pipeline.inference import upload

        champion = self._champion()
        predictor = champion.predictor
        out = []
        for case in cases:
            decoded = upload.decode(Path(case.image).read_bytes(), predictor.image_size)
            out.append(float(predictor.logit_features(decoded.array)[0]))
        return out


def format_adapt(out: dict) -> str:
    fit = out["fit"]
    lines = [f"champion v{out['champion']}: current threshold {out['current']['threshold']:.4f}"]
    before, after = fit.get("before"), fit.get("after")
    if before and after:
        lines.append(f"{after['n']} confirmed cases ({after['positives']} PNEUMONIA, {after['negatives']} NORMAL)")
        lines.append(f"{'':14}{'before':>24}{'after (out of fold)':>26}")
        for key in ("sensitivity", "specificity"):
            b, a = before[key], after[key]
            lines.append(f"{key:14}{b:>8.3f} [{before[key + '_ci'][0]:.3f}, {before[key + '_ci'][1]:.3f}]"
                         f"{a:>10.3f} [{after[key + '_ci'][0]:.3f}, {after[key + '_ci'][1]:.3f}]")
        for key, label in (("auc", "AUC"), ("ece", "ECE")):
            lines.append(f"{label:14}{before[key]:>8.3f}{'':15}{after[key]:>10.3f}")
        if fit.get("threshold") is not None:
            lines.append(f"site threshold {fit['threshold']:.4f}, calibration a={fit['calibration']['a']:.3f} "
                         f"b={fit['calibration']['b']:.3f}")
    if out.get("version"):
        lines.append(f"registered v{out['version']}; {'promoted to champion' if out['promoted'] else 'not promoted'}")
    lines.append(out["reason"])
    return "\n".join(lines)
