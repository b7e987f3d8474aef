#!/usr/bin/env bash
# The soak of tests/soak.rs, longer: wrk at saturation through guard with authentication while
# the users file and the certificate files churn every 3 s. Prints wrk's report (req/s, latency
# percentiles, errors) and guard's RSS every 3 s. Usage: bench/soak.sh [SECONDS] (default 300).
set -euo pipefail
cd "$(dirname "$0")/.."
GUARD_SOAK_SECONDS="${1:-300}" exec cargo test --release --test soak -- --nocapture
