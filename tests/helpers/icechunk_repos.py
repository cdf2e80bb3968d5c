"""Icechunk repositories for the publish-conflict tests (core and flow halves of test_icechunk)."""

from __future__ import annotations

import icechunk

from topozarr_core import create_pyramid


def new_repo(path):
    return icechunk.Repository.create(icechunk.local_filesystem_storage(str(path)))


def another_writer_publishes(repo, ds) -> str:
    winner = repo.writable_session("main")
    create_pyramid(ds + 1, levels=2, x_dim="lon", y_dim="lat").write(winner.store)
    return winner.commit("the winner's pyramid")
