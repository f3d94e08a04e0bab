"""Serving from the command line: roll back, bring back what the registry serves, show it.

    python -m infra.rollout rollback MODEL [--alias production]   # the alias back to the version it replaced
    python -m infra.rollout restore                               # every alias served again (make up runs it)
    python -m infra.rollout status                                # each model@alias: version, URL, health

The URL of a model@alias is its stable route on the version's serving platform (``tasks.serving.platforms``: a
router on this machine, ``$FINEFLOW_HOME/routers/``, or a Ray Serve route): the same across versions, rollbacks
and restarts. Requests need the API key, as the endpoints behind do.
"""

from __future__ import annotations

import argparse
import sys


def status() -> None:
    from tasks.services import registry
    from tasks.serving import platforms

    for rm in registry.client().search_registered_models():
        for alias, version in (rm.aliases or {}).items():
            platform = platforms.of_tags(registry.version_tags(rm.name, str(version)))
            print(f"{rm.name}@{alias}\tversion {version}\t{platform.route_status(rm.name, alias)}\t{platform.name}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    back = sub.add_parser("rollback", help="move the alias back to the version it replaced")
    back.add_argument("model")
    back.add_argument("--alias", default="production")
    sub.add_parser("restore", help="serve again every alias whose endpoint or router is gone")
    sub.add_parser("status", help="each model@alias with its version and URL")
    args = parser.parse_args(argv)
    from tasks.serving import rollout

    if args.command == "rollback":
        try:
            done = rollout.rollback(args.model, args.alias)
        except (ValueError, RuntimeError) as e:
            sys.exit(f"rollback failed, nothing changed: {e}")
        print(f"{done.model}@{done.alias} -> version {done.version} at {done.url}")
    elif args.command == "restore":
        rollout.restore()
    else:
        status()


if __name__ == "__main__":
    main()
