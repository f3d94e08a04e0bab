"""Serving from the command line: roll back, bring back what the registry serves, show it.

    python -m infra.rollout rollback MODEL [--alias production]   # the alias back to the version it replaced
    python -m infra.rollout restore [MODEL ...]                   # every alias served again (make up runs it)
    python -m infra.rollout status [MODEL ...]                    # each model@alias: version, URL, health

The URL of a model@alias is its stable route on the version's serving platform (``tasks.serving.platforms``: a
router on this machine, ``$FINEFLOW_HOME/routers/``, or a Ray Serve route): the same across versions, rollbacks
and restarts. Requests need the API key, as the endpoints behind do.
"""

from __future__ import annotations

import argparse
import sys


def status(models: list[str] | None = None) -> None:
    from tasks.services import registry
    from tasks.serving import platforms

    registered = registry.client().search_registered_models()
    if missing := sorted(set(models or ()) - {rm.name for rm in registered}):
        sys.exit(f"no registered model named {', '.join(missing)}")
    for rm in registered:
        if models and rm.name not in models:
            continue
        for alias, version in (rm.aliases or {}).items():
            platform = platforms.of_tags(registry.version_tags(rm.name, str(version)))
            try:
                route = platform.route_status(rm.name, alias)
            except Exception as e:  # one unreachable platform does not hide the others' rows
                route = f"-\tunknown: {e}".replace("\n", " ")
            print(f"{rm.name}@{alias}\tversion {version}\t{route}\t{platform.name}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    back = sub.add_parser("rollback", help="move the alias back to the version it replaced")
    back.add_argument("model")
    back.add_argument("--alias", default="production")
    again = sub.add_parser("restore", help="serve again every alias whose endpoint or router is gone")
    again.add_argument("models", nargs="*", help="only these registered models (default: all)")
    show = sub.add_parser("status", help="each model@alias with its version and URL")
    show.add_argument("models", nargs="*", help="only these registered models (default: all)")
    args = parser.parse_args(argv)
    from tasks.serving import rollout

    if args.command == "rollback":
        try:
            done = rollout.rollback(args.model, args.alias)
        except (ValueError, RuntimeError) as e:
            sys.exit(f"rollback failed, nothing changed: {e}")
        print(f"{done.model}@{done.alias} -> version {done.version} at {done.url}")
    elif args.command == "restore":
        rollout.restore(args.models)
    else:
        status(args.models)


if __name__ == "__main__":
    main()
