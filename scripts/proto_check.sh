#!/usr/bin/env bash
# The proto contract check (run by scripts/test.sh; rules in buf.yaml):
#   1. buf lint over proto/;
#   2. buf breaking against the previous proto state: the most recent commit that touched proto/
#      whose proto/ differs from the working tree's. Uncommitted proto edits are checked against
#      HEAD's protos; a clean checkout whose HEAD changed the protos is checked against the state
#      before that change.
# With no earlier proto state in the history there is nothing to break: say so and pass, unless
# the clone is shallow (the earlier state may just not be fetched): then fail when CI=true and
# warn otherwise.
# buf is installed by scripts/setup.sh into tools/buf/node_modules (version pinned there).
set -euo pipefail
cd "$(dirname "$0")/.."

buf=tools/buf/node_modules/.bin/buf
if ! "$buf" --version >/dev/null 2>&1; then
    echo "proto_check: buf is not installed at $buf: run 'bash scripts/setup.sh' (needs Node.js and npm)" >&2
    exit 1
fi

echo "proto_check: buf $("$buf" --version) lint" >&2
if ! "$buf" lint; then
    echo "proto_check: FAILED: buf lint found the problems above (rules: buf.yaml)" >&2
    exit 1
fi

in_ci() { [ "${CI:-}" = "true" ] || [ "${CI:-}" = "1" ]; }

if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    if in_ci; then
        echo "proto_check: FAILED: not a git checkout, so there is no earlier proto state to check breaking changes against" >&2
        exit 1
    fi
    echo "proto_check: not a git checkout: breaking-change check skipped" >&2
    exit 0
fi

# Untracked .proto files make the working tree differ from every commit (git diff ignores them).
untracked=$(git ls-files --others --exclude-standard -- proto)
against=""
for commit in $(git log --format=%H -- proto buf.yaml); do
    if [ -n "$untracked" ] || ! git diff --quiet "$commit" -- proto; then
        against=$commit
        break
    fi
done

if [ -z "$against" ]; then
    if [ "$(git rev-parse --is-shallow-repository)" = "true" ]; then
        msg="this is a shallow clone and no commit in its history has a proto/ different from the working tree's"
        if in_ci; then
            echo "proto_check: FAILED: $msg, so the breaking-change check has nothing to compare against." >&2
            echo "proto_check: fetch more history (git fetch --unshallow, or clone without --depth)." >&2
            exit 1
        fi
        echo "proto_check: $msg: breaking-change check skipped (git fetch --unshallow to run it)" >&2
        exit 0
    fi
    echo "proto_check: no earlier proto state in the history (proto/ never changed): nothing to break, breaking-change check skipped" >&2
    exit 0
fi

# buf clones the commit from the local repository; subdir=proto is the module root at every
# commit (old ones have no buf.yaml). The rules and ignores are this checkout's buf.yaml.
git_dir=$(cd "$(git rev-parse --git-common-dir)" && pwd)
echo "proto_check: buf breaking against $(git log -1 --format='%h (%s)' "$against" | cut -c1-100)" >&2
if ! "$buf" breaking --against "$git_dir#ref=$against,subdir=proto"; then
    echo "proto_check: FAILED: breaking changes to the public contract against $against (above)." >&2
    echo "proto_check: published messages, fields and RPCs are never removed, renamed or retyped: add new ones and deprecate the old" >&2
    exit 1
fi
echo "proto_check: ok" >&2
