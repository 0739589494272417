"""The nginx proxy in front of gunicorn (docker/proxy): per-route body limits (issue 25 item 5),
forwarded headers set by nginx, never passed through from the client (item 18), and the compose
wiring of the trusted proxy address (item 6). nginx is not installed here: docker/proxy/start.sh
renders the real config with a stand-in `nginx`, and the rendered text is checked."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def render(tmp_path, **env) -> str:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "nginx").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "nginx").chmod(0o755)
    out = tmp_path / "default.conf"
    proc = subprocess.run(["sh", str(REPO / "docker/proxy/start.sh")], capture_output=True, text=True,
                          env={"PATH": f"{bindir}:{os.environ['PATH']}", "PROXY_CONF_OUT": str(out),
                               "PROXY_TEMPLATE": str(REPO / "docker/proxy/site.conf.template"), **env})
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "@" not in re.sub(r"#.*", "", text), text      # every placeholder filled
    return text


def locations(conf: str) -> dict[str, str]:
    """location (as written) -> its body."""
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"location\s+([^{]+)\{(.*?)\n    \}", conf, re.S)}


def body_limit(block: str) -> str:
    return re.search(r"client_max_body_size\s+(\S+);", block).group(1)


def test_body_limits_per_route(tmp_path):
    conf = render(tmp_path)
    server_default = body_limit(conf.split("location")[0])
    locs = locations(conf)
    assert server_default == "64k"
    assert body_limit(locs["/accounts/"]) == "64k" and body_limit(locs["/admin/"]) == "64k"
    assert body_limit(locs["= /api/predict"]) == body_limit(locs["= /api/v1/predict"]) == "51m"
    assert body_limit(locs["= /upload/"]) == "510m"          # the batch page, its own location
    assert "client_max_body_size" not in locs["/"]           # everything else: the small default
    for block in locs.values():
        assert "proxy_pass http://web:8000;" in block


def test_limits_follow_the_environment_and_bad_sizes_are_refused(tmp_path):
    conf = render(tmp_path, PROXY_MAX_BODY="210m", PROXY_API_MAX_BODY="21m", PROXY_SMALL_MAX_BODY="32k")
    locs = locations(conf)
    assert body_limit(locs["= /upload/"]) == "210m" and body_limit(locs["= /api/predict"]) == "21m"
    assert body_limit(locs["/admin/"]) == "32k"
    bad = subprocess.run(["sh", str(REPO / "docker/proxy/start.sh")], capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "PROXY_API_MAX_BODY": "51m; evil",
                              "PROXY_CONF_OUT": str(tmp_path / "x.conf"),
                              "PROXY_TEMPLATE": str(REPO / "docker/proxy/site.conf.template")})
    assert bad.returncode != 0 and "PROXY_API_MAX_BODY" in bad.stderr


def test_forwarded_headers_are_set_by_nginx_not_passed_through(tmp_path):
    """Item 18: a client's own X-Forwarded-Proto / -For never reach gunicorn as sent."""
    conf = render(tmp_path)
    assert "$http_x_forwarded_proto" not in conf.replace("$xray_tls_terminator:$http_x_forwarded_proto", "")
    assert re.search(r"map \$xray_tls_terminator \$xray_forwarded_for \{\s*default \$remote_addr;\s*"
                     r"1 \$proxy_add_x_forwarded_for;\s*\}", conf)
    server = conf.split("location")[0]
    assert "proxy_set_header X-Forwarded-Proto $xray_forwarded_proto;" in server
    assert "proxy_set_header X-Forwarded-For $xray_forwarded_for;" in server
    assert "proxy_set_header Host $http_host;" in server
    for block in locations(conf).values():   # inherited: a location's own proxy_set_header drops them
        assert "proxy_set_header" not in block
    # without a TLS terminator configured, the proto is this hop's $scheme, the address the peer's
    assert re.search(r"map \"\$xray_tls_terminator:\$http_x_forwarded_proto\" \$xray_forwarded_proto \{\s*"
                     r"default \$scheme;", conf)
    assert re.search(r"geo \$xray_tls_terminator \{\s*default 0;\s*\}", conf)
    # an outer TLS terminator's address may be named: only it is believed
    conf = render(tmp_path, PROXY_TLS_TERMINATORS="10.0.0.5,10.1.0.0/16")
    assert re.search(r"geo \$xray_tls_terminator \{\s*default 0;\s*10\.0\.0\.5 1;\s*10\.1\.0\.0/16 1;\s*\}", conf)


def test_compose_trusts_only_the_proxy_address():
    """Item 6: gunicorn and Django believe X-Forwarded-* from the proxy's fixed address only."""
    services = yaml.safe_load((REPO / "docker-compose.yaml").read_text())["services"]
    model = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    web, proxy = services["web"]["environment"], services["proxy"]
    address = proxy["networks"]["edge"]["ipv4_address"]
    assert address == "${XRAY_PROXY_ADDRESS:-172.31.250.2}"
    assert web["XRAY_TRUSTED_PROXIES"] == web["WEB_FORWARDED_ALLOW_IPS"] == address
    assert "edge" in services["web"]["networks"] and list(proxy["networks"]) == ["edge"]
    subnet = model["networks"]["edge"]["ipam"]["config"][0]["subnet"]
    assert subnet == "${XRAY_EDGE_SUBNET:-172.31.250.0/29}"
    import ipaddress
    assert ipaddress.ip_address("172.31.250.2") in ipaddress.ip_network("172.31.250.0/29")
    # web (started first) draws its addresses from a range without the proxy's: it once took .2
    web_range = model["networks"]["edge"]["ipam"]["config"][0]["ip_range"]
    assert web_range == "${XRAY_EDGE_WEB_RANGE:-172.31.250.4/30}"
    default = lambda value: value.split(":-", 1)[1].rstrip("}")   # noqa: E731  (compose's ${VAR:-default})
    dynamic = ipaddress.ip_network(default(web_range))
    assert dynamic.subnet_of(ipaddress.ip_network(default(subnet)))
    assert ipaddress.ip_address(default(address)) not in dynamic
    # nothing else shares the edge network (an Airflow task there could claim any client address)
    assert sorted(n for n, s in services.items() if "edge" in (s.get("networks") or [])) == ["proxy", "web"]
