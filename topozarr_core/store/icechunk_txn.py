"""Icechunk targets as transactions: work on a staging branch, publish by moving the user's branch.

Writable Icechunk sessions do not pickle and cannot fork once they hold changes, so a distributed
build commits each finished level to a private staging branch (``fork()``/``merge`` within a
level) and, as its very last step, moves the user's branch (e.g. ``main``) to the staging head
with a compare-and-swap. Until then readers of ``main`` see the previous snapshot; a crashed or
failed run leaves ``main`` untouched and its staging branch ready for a resume.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import icechunk

STAGING_PREFIX = "topozarr-staging-"


class PublishConflict(RuntimeError):
    """The user's branch moved while the run was building; nothing was published."""


@dataclass(frozen=True)
class IcechunkTarget:
    """Plain-data handle on an Icechunk repository branch (local path or s3://bucket/prefix)."""

    location: str
    branch: str = "main"

    def storage(self) -> icechunk.Storage:
        """The repository's Icechunk storage: S3 (region, endpoint and credentials from the environment) or a local path."""
        if self.location.startswith("s3://"):
            bucket, _, prefix = self.location[len("s3://"):].partition("/")
            endpoint = os.environ.get("AWS_ENDPOINT_URL")
            return icechunk.s3_storage(
                bucket=bucket,
                prefix=prefix or None,
                region=os.environ.get("AWS_REGION", os.environ.get("AWS_DEFAULT_REGION")),
                endpoint_url=endpoint,
                allow_http=bool(endpoint and endpoint.startswith("http://")),
                force_path_style=bool(endpoint),
                from_env=True,
            )
        return icechunk.local_filesystem_storage(os.path.abspath(self.location.removeprefix("file://")))

    def open_repo(self, create: bool = True) -> icechunk.Repository:
        """Open the repository, creating it when it does not exist and ``create`` is set (else FileNotFoundError).

        :param create: create a missing repository.
        """
        storage = self.storage()
        if icechunk.Repository.exists(storage):
            return icechunk.Repository.open(storage)
        if not create:
            raise FileNotFoundError(f"no Icechunk repository at {self.location!r}")
        return icechunk.Repository.create(storage)

    def staging_branch(self, run_id: str) -> str:
        """The name of run ``run_id``'s staging branch.

        :param run_id: the run's id (the same on every retry and resume of the run).
        """
        return f"{STAGING_PREFIX}{run_id}"


def check_target(target: IcechunkTarget, spec: Any, mode: str, levels: list[int]) -> None:
    """Refuse, before anything is created, branched or committed, a target ``begin``/``initialise`` would fail on
    (read-only: a missing repository is not created here).

    :param target: the repository branch.
    :param spec: the pyramid's spec.
    :param mode: ``"w"``, ``"w-"`` or ``"a"``.
    :param levels: the levels the write rewrites.
    """
    from topozarr_core.publish.contract import check_target as check_tree
    from topozarr_core.store.errors import TargetError, error_summary, store_errors
    from topozarr_core.store.targets import check_local_target, probe_object_store

    on_s3 = target.location.startswith("s3://")
    if not on_s3:
        check_local_target(target.location)
    try:
        storage = target.storage()
        exists = icechunk.Repository.exists(storage)
        if exists:
            repo = icechunk.Repository.open(storage)
            branches = set(repo.list_branches())
        elif on_s3:
            probe_object_store(target.location)  # the bucket exists and the credentials are accepted
    except store_errors() as err:
        raise TargetError(f"cannot access the Icechunk repository at {target.location!r}: {error_summary(err)}") from None
    if not exists:
        if target.branch != "main":
            raise TargetError(f"branch {target.branch!r} does not exist: there is no Icechunk repository at "
                              f"{target.location!r} yet, and a new one has only 'main'")
        return
    if target.branch not in branches:
        raise TargetError(f"branch {target.branch!r} does not exist in {target.location!r}; create it first")
    check_tree(repo.readonly_session(branch=target.branch).store, spec, mode, levels)


def begin(target: IcechunkTarget, run_id: str) -> tuple[str, str]:
    """Create (or reuse, on resume) the staging branch; returns (staging branch, base snapshot of the user's branch).

    :param target: the repository branch.
    :param run_id: the run's id (names the staging branch).
    """
    repo = target.open_repo(create=True)
    branches = set(repo.list_branches())
    if target.branch not in branches:
        raise ValueError(f"branch {target.branch!r} does not exist in {target.location!r}; create it first")
    staging = target.staging_branch(run_id)
    base = repo.lookup_branch(target.branch)
    if staging not in branches:
        repo.create_branch(staging, base)
    return staging, base


def writable(target: IcechunkTarget, branch: str) -> icechunk.Session:
    """A writable session on ``branch`` of an existing repository.

    :param target: the repository.
    :param branch: the branch to write to.
    """
    return target.open_repo(create=False).writable_session(branch)


def fork(target: IcechunkTarget, staging: str) -> Any:
    """A picklable ForkSession of the staging head, for one level's batch writers.

    :param target: the repository.
    :param staging: the staging branch.
    """
    return writable(target, staging).fork()


def merge_and_commit(target: IcechunkTarget, staging: str, forks: list[Any], message: str) -> str:
    """Merge the batch writers' forks into the staging branch and commit them as one snapshot.

    :param target: the repository.
    :param staging: the staging branch.
    :param forks: the writers' forked sessions, once they are done.
    :param message: the commit message.
    :returns: the new snapshot id.
    """
    session = writable(target, staging)
    if forks:
        session.merge(*forks)
    return session.commit(message, allow_empty=True)


def publish(target: IcechunkTarget, staging: str, base: str) -> str:
    """Move the user's branch to the staging head (compare-and-swap on ``base``); drop staging.

    The loser of a race (the branch moved since ``base``) publishes nothing and deletes its staging
    branch too: its pyramid was built on a snapshot that is no longer the branch's head, so nothing
    could ever publish it (a retry of the run compares with the same ``base``).

    :param target: the repository and the user's branch.
    :param staging: the staging branch.
    :param base: the user's branch head that the run started from (:func:`begin`).
    """
    repo = target.open_repo(create=False)
    current = repo.lookup_branch(target.branch)
    has_staging = staging in repo.list_branches()
    head = repo.lookup_branch(staging) if has_staging else None
    if current == head:  # already published (a resumed run that died after publishing)
        return head
    if current == base and head is not None:
        try:
            repo.reset_branch(target.branch, head, from_snapshot_id=base)
        except icechunk.ConflictError:  # it moved between our look and the compare-and-swap
            current = repo.lookup_branch(target.branch)
        else:
            repo.delete_branch(staging)
            return head
    if has_staging:
        repo.delete_branch(staging)
    moved = f"moved from {base} to {current}" if current != base else f"is at {base}, but {staging!r} is gone"
    raise PublishConflict(f"branch {target.branch!r} {moved} during the build; nothing was published and the staging "
                          "branch was deleted; start a new run to build on the branch's head")
