"""The nginx configuration the benchmark uses as its reference proxy, rendered into a scratch directory.

One worker, the backend picked by a `map` on the same header the gateway reads (unknown → 400), an upstream
keep-alive pool per backend, WebSocket upgrades, and a buffered access log: what a careful operator deploys.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

TEMPLATE = """\
{user}worker_processes 1;
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 8192; }}  # 2,000 held WebSockets take 4,000
http {{
    access_log {root}/access.log combined buffer=64k flush=1s;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    # A 20 KB API prompt stays in memory instead of going through a temp file.
    client_body_buffer_size 128k;
    client_max_body_size 100m;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    map $http_{header_var} $comfy_backend {{
        default "";
{map_lines}
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        "" "";
    }}
{upstreams}
    server {{
        listen {host}:{port} backlog=1024;
        location / {{
            if ($comfy_backend = "") {{ return 400; }}
            proxy_pass http://$comfy_backend;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""

UPSTREAM = """\
    upstream {name} {{
        server {address};
        keepalive 64;
    }}
"""


def find_nginx() -> str | None:
    # Debian installs it in /usr/sbin, which a non-root PATH often lacks.
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


def write_nginx_config(root: Path, *, host: str, port: int, backends: Mapping[str, str],
                       header: str = "X-Comfy-Backend") -> Path:
    """Writes root/nginx.conf for backends (name → "http://host:port"); returns its path."""
    root.mkdir(parents=True, exist_ok=True)
    map_lines = "\n".join(f"        {name} {name};" for name in backends)
    upstreams = "".join(UPSTREAM.format(name=name, address=url.removeprefix("http://").rstrip("/"))
                        for name, url in backends.items())
    # A root master drops its worker to `nobody`, which could not write the temp dirs made here.
    user = "user root root;\n" if os.geteuid() == 0 else ""
    text = TEMPLATE.format(user=user, root=root, host=host, port=port, map_lines=map_lines,
                           upstreams=upstreams, header_var=header.lower().replace("-", "_"))
    path = root / "nginx.conf"
    path.write_text(text)
    return path


def nginx_command(nginx: str, config: Path) -> list[str]:
    return [nginx, "-p", str(config.parent), "-c", str(config), "-e", str(config.parent / "error.log")]
