"""Start a Ray node of the serving cluster inside fineflow's image, whose paths a host cannot build the command for.

    python -m infra.image.ray_node --port 26379 --num-cpus 1 --replica-slots 4            # the head (client: 10001)
    python -m infra.image.ray_node --address HEAD:26379 --num-cpus 1 --replica-slots 4    # a worker node

The node is ``tasks.deploy.ray.Distributed``'s ``ray start`` in the image's ``ray`` environment: replicas on it
run engines from the image's checkout, as the flow that deploys them (in the same image) names them.
"""

from __future__ import annotations

import argparse
import os

from tasks.deploy.ray import Distributed
from tasks.settings import environ


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--address", help="the head to join (none: this node is the head)")
    p.add_argument("--port", type=int, help="the head's port")
    for key in ("node_ip", "temp_dir"):
        p.add_argument(f"--{key.replace('_', '-')}")
    for key in ("num_cpus", "replica_slots", "object_store_memory", "ray_client_server_port"):
        p.add_argument(f"--{key.replace('_', '-')}", type=int)
    args = vars(p.parse_args(argv))
    address, port = args.pop("address"), args.pop("port")
    command = Distributed(port=port, **{k: v for k, v in args.items() if v is not None}).cmd(master_ip=address)
    os.execve(command.argvs[-1][0], command.argvs[-1], {**environ(), **command.env})


if __name__ == "__main__":
    main()
