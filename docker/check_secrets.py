#!/usr/bin/env python3
"""Refuse to start a container whose secrets are placeholders or weak (issue 11, item 3).

`${VAR:?}` in docker-compose.yaml only rejects empty values: a copied .env.example
(`change-me-...`), a short password or a known default would go live, and a known Airflow JWT
secret lets anyone forge API tokens. Run by docker/entrypoint.sh before every service command.

Checked: every non-empty environment variable whose name says it holds a secret, and the
password inside every database/broker URL. Empty values are left to compose / the service (an
optional feature such as DOCTOR_PASSWORD may be off). Exit 78 (EX_CONFIG) with the reasons.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
import sys
from urllib.parse import urlsplit

SECRET_NAME = re.compile(r"(PASSWORD|SECRET|FERNET_KEY|_TOKEN)", re.I)
URL_NAME = re.compile(r"(_URL|_URI|_CONN)$")
PLACEHOLDER = re.compile(r"change-?me|replace-?me|placeholder|example|xxxx", re.I)
# defaults that tutorials and images ship with
KNOWN = {"password", "password1234", "admin", "airflow", "postgres", "mlflow", "minioadmin",
         "secret", "redis", "web", "django-insecure", "collectstatic-only-not-a-secret"}
MIN_LEN = 16
# names that look secret but are not (paths to files, public settings)
NOT_SECRET = {"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", "PIP_CERT"}


def weakness(value: str) -> str | None:
    """Why `value` may not be used as a secret, or None."""
    if PLACEHOLDER.search(value):
        return "is a placeholder from .env.example"
    if value.lower() in KNOWN:
        return "is a well-known default"
    if len(value) < MIN_LEN:
        return f"is shorter than {MIN_LEN} characters"
    if len(set(value)) < 8:
        return "has fewer than 8 distinct characters"
    return None


def fernet_problem(value: str) -> str | None:
    try:
        if len(base64.urlsafe_b64decode(value.encode())) == 32:
            return None
    except (binascii.Error, ValueError):
        pass
    return "is not a Fernet key (32 url-safe base64 bytes; see .env.example)"


def problems(env: dict[str, str]) -> list[str]:
    found = []
    for name, value in sorted(env.items()):
        if not value or name in NOT_SECRET:
            continue
        if SECRET_NAME.search(name):
            why = weakness(value)
            if why is None and name.endswith("FERNET_KEY"):
                why = fernet_problem(value)
            if why:
                found.append(f"{name} {why}")
        elif URL_NAME.search(name) and "@" in value:
            try:
                password = urlsplit(value).password
            except ValueError:
                password = None
            if password is not None:
                why = weakness(password) if password else "has an empty password"
                if why:
                    found.append(f"the password in {name} {why}")
    return found


def main() -> int:
    found = problems(dict(os.environ))
    if os.environ.get("XRAY_ALLOW_WEAK_SECRETS") == "1":  # a throwaway local trial, said loudly
        for p in found:
            print(f"check_secrets: WARNING (XRAY_ALLOW_WEAK_SECRETS=1): {p}", file=sys.stderr)
        return 0
    for p in found:
        print(f"check_secrets: refusing to start: {p}", file=sys.stderr)
    if found:
        print("check_secrets: generate real secrets with docker/gen-env.sh (see .env.example)", file=sys.stderr)
        return 78
    return 0


if __name__ == "__main__":
    sys.exit(main())
