"""The ServiceAccountCredential controller, one concern a module (cert-manager's shape):

- `handlers`: the kopf decorators, each delegating in one line;
- `reconcile`: read the world, ask domain/ for the step, hand it to its writer;
- `issuing`: the Secret written once and the status that records it;
- `ending`: expiry, revocation, failure, deletion, and the Secret's deletion policy;
- `ledger`: the account's active slots (compare-and-swap); returns whom it admitted;
- `expiry`: the one place that schedules expiry and the warning;
- `audit`: checking issued Secrets are still there and still ours;
- `state`: the in-memory runtime the indices feed (schedule, audit, locks);
- `views`: what the indices keep of each credential.

Each imports only the ones below it in that list (an import-linter contract checks it).
Importing the package registers the handlers with kopf.
"""

from kubeiam.controllers.credentials import handlers

__all__ = ["handlers"]
