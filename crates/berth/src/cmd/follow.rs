//! Following a log the server numbers (events, the audit log) with blocking reads, across
//! restarts of the server: resumed after the last entry seen, so none is repeated.

use std::time::Duration;

use berth_api::{ClientError, Indexed};

/// Prints what `fetch(after, index)` brings, for good; `seq` numbers an entry.
pub async fn follow<T, F, Fut>(
    mut after: u64,
    mut fetch: F,
    seq: impl Fn(&T) -> u64,
    mut print: impl FnMut(&T) -> anyhow::Result<()>,
) -> anyhow::Result<std::process::ExitCode>
where
    F: FnMut(u64, u64) -> Fut,
    Fut: Future<Output = Result<Indexed<Vec<T>>, ClientError>>,
{
    let mut index = 0;
    let mut delay = Duration::from_millis(200);
    loop {
        let answer = match fetch(after, index).await {
            Ok(a) => a,
            Err(e) if e.status().is_none() => {
                if delay == Duration::from_millis(200) {
                    eprintln!("note: lost the server ({e}); reconnecting");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
                index = 0;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        delay = Duration::from_millis(200);
        index = answer.index;
        for e in &answer.value {
            after = seq(e);
            print(e)?;
        }
    }
}
