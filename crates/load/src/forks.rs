//! Which process this is, as far as `fork` goes. State that names threads of its own process (the
//! thread pool, a loader's sweep, the Python binding's iterators) must not be used by a forked
//! child, which inherits the state but not the threads. A process id tells the child apart from
//! its parent only until ids are reused: a long job that forks many workers may see a grandchild
//! get the id of a process long gone whose state it inherited. [`generation`] cannot collide: a
//! `pthread_atfork` handler bumps it in every child, so a process sees only state made by its
//! ancestors, all of lower generations.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Forks between the first call of [`generation`] in the process tree and this process.
static GENERATION: AtomicU64 = AtomicU64::new(0);
static REGISTER: Once = Once::new();

/// Runs in the child of every fork, before `fork` returns there (an atomic add is
/// async-signal-safe, as a handler must be).
#[cfg(unix)]
extern "C" fn forked() {
    GENERATION.fetch_add(1, Ordering::Relaxed);
}

/// This process's generation: different in every forked child from every state its ancestors made
/// after their first call here. Call it before making such state, and compare when using it.
pub fn generation() -> u64 {
    REGISTER.call_once(|| {
        #[cfg(unix)]
        {
            // SAFETY: registers a handler that only adds to an atomic; the registration is
            // process wide, inherited by children, and made once (a fork copies the `Once`
            // completed). A failure (out of memory) leaves forks unseen, as process ids did.
            unsafe {
                libc::pthread_atfork(None, None, Some(forked));
            }
        }
    });
    GENERATION.load(Ordering::Relaxed)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_forked_child_has_a_generation_of_its_own() {
        let parent = generation();
        // SAFETY: the child only reads an atomic and exits without unwinding or running
        // destructors (`_exit`), as a child of a threaded process must.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let code = if generation() == parent + 1 { 0 } else { 1 };
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked, into a local.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{status:#x}"
        );
        assert_eq!(generation(), parent, "the parent's stays");
    }
}
