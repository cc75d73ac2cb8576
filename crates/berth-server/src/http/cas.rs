//! Compare-and-swap writes: read, decide, commit guarded by the revisions read; when a
//! concurrent write wins, read again and decide again.

use axum::http::StatusCode;
use berth_store::state::State;
use berth_store::{StoreError, Txn};

use super::error::{ApiError, ApiResult};

/// Tries before a record that keeps changing is given up on.
const TRIES: usize = 8;

/// What one attempt decided.
pub(crate) enum Attempt<T> {
    /// Commit this transaction (guarded by what the attempt read), then answer `T`.
    Write(Txn, T),
    /// Nothing to write: answer `T` as it is.
    Done(T),
}

/// Runs `attempt` until its write commits or it has nothing to write, and answers with the
/// store index reached and the attempt's value. A record that a concurrent writer changes
/// `TRIES` times in a row is refused with 409 naming `what`: nothing was written.
pub(crate) fn retry<T>(
    state: &State,
    what: &str,
    mut attempt: impl FnMut() -> ApiResult<Attempt<T>>,
) -> ApiResult<(u64, T)> {
    for _ in 0..TRIES {
        match attempt()? {
            Attempt::Done(value) => return Ok((state.store().revision(), value)),
            Attempt::Write(txn, value) => match state.commit(txn) {
                Ok(index) => return Ok((index, value)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            },
        }
    }
    Err(ApiError::new(StatusCode::CONFLICT, format!("{what} is changing too fast; retry")))
}
