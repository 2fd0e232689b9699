//! mmtensor's thread pool for parallel work, one per process, so that parallel work survives
//! `fork`. Every parallel operation of every mmtensor crate runs in it: the loader's gathers
//! (`take`, `Column::take_into`, the `Loader`'s batches: the sort into file order as much as the
//! copies) and `verify`, the converter's cast and byte-swap kernels, the CLI's benchmark reads. Use
//! [`install`] for your own rayon work that may run in a forked child.
//!
//! Nothing enforces this at run time; two things guard it. The workspace's `clippy.toml` refuses
//! rayon's entry points (parallel iterators, `par_sort*`, `join`, `scope`, `spawn`,
//! `current_num_threads`, ...) with `disallowed-methods`, and each call that runs inside
//! [`install`] is allowed where it stands, on the statement holding the `install`. And
//! `tests/fork.rs` (with its twin in the converter and `test_fork.py` in the binding) uses rayon's
//! global pool, forks, and runs every public parallel operation in the child under a watchdog.
//!
//! `fork` copies only the calling thread. A child forked after its parent used rayon's global pool
//! inherits that pool's state but none of its threads, so the first parallel call in the child
//! queues work that no thread will ever run and waits forever. That is exactly what a PyTorch
//! DataLoader worker started with `fork` (the default on Linux) would do after its parent called
//! `verify()`, gathered a large batch, or used any other library that runs on the global pool
//! (tokenizers, polars). So parallel work runs in a pool that remembers the process that built it;
//! a process that finds one built by another process (its parent) builds its own.

use std::sync::{Arc, Mutex};

use rayon::ThreadPool;

/// The pool, and the process that built it ([`crate::forks::generation`]). The lock is held only
/// to read or replace the pair, never while work runs, so a fork while another thread holds it is
/// all but impossible (and no worse than the global pool's hang this replaces).
static POOL: Mutex<Option<(u64, Arc<ThreadPool>)>> = Mutex::new(None);

/// This process's pool, built on first use; `None` when no thread can be started.
fn pool() -> Option<Arc<ThreadPool>> {
    let me = crate::forks::generation();
    let mut slot = POOL.lock().unwrap_or_else(|e| e.into_inner());
    match slot.as_ref() {
        Some((owner, pool)) if *owner == me => return Some(Arc::clone(pool)),
        _ => {}
    }
    let pool = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .thread_name(|i| format!("mmtensor-{i}"))
            .build()
            .ok()?,
    );
    if let Some(inherited) = slot.replace((me, Arc::clone(&pool))) {
        // The parent's pool: its threads do not exist here, and dropping it would signal them
        // through locks they may have held at the fork. It is leaked (once per fork).
        std::mem::forget(inherited);
    }
    Some(pool)
}

/// Runs `work`, whose rayon parallel iterators then run in this process's pool. When no pool can
/// be built (no thread can be started), `work` runs on the calling thread with rayon's defaults.
///
/// `work` runs on one of the pool's threads, not the caller's: keep calls into an interpreter
/// (Python's signal checks, callbacks) outside it.
pub fn install<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    match pool() {
        Some(pool) => pool.install(work),
        None => work(),
    }
}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    #[test]
    fn work_runs_in_the_loader_pool() {
        #[allow(clippy::disallowed_methods)] // Inside `install`.
        let names: Vec<String> = super::install(|| {
            (0..64)
                .into_par_iter()
                .map(|_| std::thread::current().name().unwrap_or("").to_owned())
                .collect()
        });
        assert!(
            names.iter().all(|n| n.starts_with("mmtensor-")),
            "{names:?}"
        );
        assert!(super::install(|| rayon::current_thread_index().is_some()));
    }
}
