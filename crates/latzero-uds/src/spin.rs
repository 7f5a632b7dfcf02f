//! Spin before parking: after activity, keep one worker of the runtime polling its sockets for
//! a short window instead of letting it sleep.
//!
//! A thread that sleeps in `epoll_wait` is woken by the kernel when its socket becomes readable.
//! When the thread's CPU has gone idle in between, that wake-up includes waking the CPU. On a
//! virtual machine whose guest does not poll before halting (`guest_halt_poll_ns` = 0, as on
//! the Firecracker VMs docs/BENCHMARKS.md was measured on), waking a halted vCPU costs ~35 µs,
//! and a call between two local processes crosses four such sleeps. A runtime that keeps
//! polling with a zero timeout for a while after its last message sees the next one without
//! being woken at all.
//!
//! One spinner task runs per tokio runtime, shared by everything on it that calls
//! [`Spinner::shared`] (the server's sessions, every SDK client). While spinning it yields to
//! the runtime, whose worker then polls the reactor with a zero timeout, and calls
//! `sched_yield`, so a thread that is ready to run on the same CPU gets it. It stops polling
//! `window` after the last [`Spinner::touch`], and is off altogether when the process may run
//! on one CPU only (`taskset -c 0`, a one-CPU container): there the spinner would only take
//! time from the process it waits for.
//!
//! The cost is CPU time: a process that receives a message at least once per window keeps one
//! CPU busy. Callers choose the window (the server's `--spin-us`, the SDK's
//! `ClientOptions::spin`); zero turns spinning off.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Id};
use tokio::sync::Notify;

/// A handle to the spinner of the runtime it was made on.
#[derive(Debug, Clone)]
pub struct Spinner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Set by `touch`, cleared by the spinner: there was activity since it last looked.
    touched: AtomicBool,
    /// The spinner task is awake, polling or staying off after contention: a `touch` need not
    /// wake it.
    awake: AtomicBool,
    /// The spinner is polling.
    spinning: AtomicBool,
    /// The spinner task still exists (it is gone once its runtime shuts down).
    alive: AtomicBool,
    /// The window, in nanoseconds: the longest any user of this spinner asked for.
    window_ns: AtomicU64,
    notify: Notify,
}

/// Whether this process may use only one CPU (`taskset -c 0`, a one-CPU container or VM; also
/// when the count cannot be read): its threads never run at the same time, and a peer process
/// on the same machine most likely shares that CPU.
pub fn one_cpu() -> bool {
    std::thread::available_parallelism().map_or(1, |n| n.get()) < 2
}

/// The spinners of the runtimes in this process, by runtime.
static SPINNERS: Mutex<Vec<(Id, Weak<Inner>)>> = Mutex::new(Vec::new());

impl Spinner {
    /// The current runtime's spinner, started if it has none, polling for at least `window`
    /// (at most [`MAX_WINDOW`]) after each touch. `None` when `window` is zero or this process
    /// may use only one CPU.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn shared(window: Duration) -> Option<Spinner> {
        if window.is_zero() || one_cpu() {
            return None;
        }
        let window_ns = window.min(MAX_WINDOW).as_nanos() as u64; // at most 10^9
        let runtime = Handle::current().id();
        let mut all = SPINNERS.lock().unwrap_or_else(|e| e.into_inner());
        all.retain(|(_, w)| w.upgrade().is_some_and(|i| i.alive.load(Ordering::Relaxed)));
        if let Some(inner) = all.iter().find(|(id, _)| *id == runtime).and_then(|(_, w)| w.upgrade()) {
            inner.window_ns.fetch_max(window_ns, Ordering::Relaxed);
            return Some(Spinner { inner });
        }
        let inner = Arc::new(Inner {
            touched: AtomicBool::new(false),
            awake: AtomicBool::new(false),
            spinning: AtomicBool::new(false),
            alive: AtomicBool::new(true),
            window_ns: AtomicU64::new(window_ns),
            notify: Notify::new(),
        });
        all.push((runtime, Arc::downgrade(&inner)));
        tokio::spawn(spin(Alive(inner.clone())));
        Some(Spinner { inner })
    }

    /// Marks activity: the spinner polls for another window from now.
    #[inline]
    pub fn touch(&self) {
        let i = &self.inner;
        // Checked first so that a busy stream of touches reads a shared line, not writes it.
        if !i.touched.load(Ordering::Relaxed) {
            i.touched.store(true, Ordering::Relaxed);
        }
        if !i.awake.load(Ordering::Relaxed) {
            i.notify.notify_one();
        }
    }

    /// Whether the spinner is polling right now.
    pub fn is_spinning(&self) -> bool {
        self.inner.spinning.load(Ordering::Relaxed)
    }
}

/// Marks activity on `spinner`, if this process spins at all (a user's spinner is `None` when
/// [`Spinner::shared`] said so).
#[inline]
pub fn touch(spinner: Option<&Spinner>) {
    if let Some(s) = spinner {
        s.touch();
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        // Lets a waiting spinner task see whether it was the last user.
        self.inner.notify.notify_one();
    }
}

/// Clears `alive` when the task ends, or is dropped with its runtime.
struct Alive(Arc<Inner>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.store(false, Ordering::Relaxed);
        self.0.spinning.store(false, Ordering::Relaxed);
        // Nothing will wake a task that is gone.
        self.0.awake.store(true, Ordering::Relaxed);
    }
}

/// The spinner task; it ends when no [`Spinner`] is left. It takes its guard as an argument,
/// so that even a task dropped before its first poll clears `alive`.
async fn spin(inner: Alive) {
    let inner = &inner.0;
    loop {
        inner.notify.notified().await;
        if Arc::strong_count(inner) == 1 {
            // `shared` hands out new handles under this lock only.
            let mut all = SPINNERS.lock().unwrap_or_else(|e| e.into_inner());
            if Arc::strong_count(inner) == 1 {
                all.retain(|(_, w)| !std::ptr::eq(w.as_ptr(), Arc::as_ptr(inner)));
                return;
            }
        }
        if !inner.touched.swap(false, Ordering::Relaxed) {
            continue; // woken by a handle's drop, not by activity
        }
        inner.awake.store(true, Ordering::Relaxed);
        inner.spinning.store(true, Ordering::Relaxed);
        let window = || Duration::from_nanos(inner.window_ns.load(Ordering::Relaxed));
        let mut until = Instant::now() + window();
        let mut thread = std::thread::current().id();
        let mut switches = preempted();
        loop {
            let before = Instant::now();
            // tokio runs this task again only after polling the reactor with a zero timeout.
            tokio::task::yield_now().await;
            // And a thread waiting for this CPU gets it.
            std::thread::yield_now();
            let now = Instant::now();
            let (t, n) = (std::thread::current().id(), preempted());
            if t != thread {
                // Moved to another worker thread: count that thread's switches from here.
                (thread, switches) = (t, n);
            } else if n != switches {
                switches = n;
                if now - before > window() {
                    // Another thread held this CPU for longer than the window: the machine
                    // is busy, and spinning takes time from whoever we wait for. Stay off
                    // for a while, awake, so that touches do not wake this task meanwhile.
                    // (A shorter hand-off, typically to the thread that reads our next
                    // message, is what spinning is for.)
                    inner.spinning.store(false, Ordering::Relaxed);
                    tokio::time::sleep(window() * BACKOFF).await;
                    break;
                }
            }
            // Read before written: while touches come from another CPU, a write on every
            // turn would move the line between the two.
            if inner.touched.load(Ordering::Relaxed) && inner.touched.swap(false, Ordering::Relaxed) {
                until = now + window();
            } else if now >= until {
                break;
            }
        }
        inner.spinning.store(false, Ordering::Relaxed);
        inner.awake.store(false, Ordering::Relaxed);
    }
}

/// The longest window a spinner polls for; longer requests are cut to it.
pub const MAX_WINDOW: Duration = Duration::from_secs(1);

/// How many windows the spinner stays off after it found its CPU wanted by another thread.
const BACKOFF: u32 = 200;

/// Involuntary context switches of this thread: a `sched_yield` that let another thread run,
/// or a preemption, counts one.
#[allow(unsafe_code)]
fn preempted() -> libc::c_long {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `u` is a valid, writable `rusage`; RUSAGE_THREAD is supported since Linux 2.6.26.
    let r = unsafe { libc::getrusage(libc::RUSAGE_THREAD, u.as_mut_ptr()) };
    if r != 0 {
        return 0;
    }
    // SAFETY: getrusage succeeded and filled it.
    unsafe { u.assume_init() }.ru_nivcsw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the runtime until `cond` holds, or fails after `secs` seconds.
    async fn until(secs: u64, what: &str, cond: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(secs);
        while !cond() {
            assert!(Instant::now() < end, "{what} never happened");
            tokio::task::yield_now().await;
        }
    }

    fn registered(s: &Spinner) -> bool {
        let all = SPINNERS.lock().unwrap();
        all.iter().any(|(_, w)| std::ptr::eq(w.as_ptr(), Arc::as_ptr(&s.inner)))
    }

    #[tokio::test]
    async fn zero_window_means_no_spinner() {
        assert!(Spinner::shared(Duration::ZERO).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_touch_spins_for_the_window_then_stops() {
        // Contention (another test's thread taking this CPU) may end a spin early and keep
        // the spinner off for BACKOFF windows: a short window keeps that short, and the
        // touches repeat until a spin is seen.
        let Some(s) = Spinner::shared(Duration::from_millis(2)) else {
            assert!(one_cpu(), "a spinner is made wherever the process may use two CPUs");
            return;
        };
        assert!(!s.is_spinning());
        until(10, "spinning after a touch", || {
            s.touch();
            s.is_spinning()
        })
        .await;
        // The window ends (or contention ends it sooner); either way it stops by itself.
        until(10, "the spin ending after the window", || !s.is_spinning()).await;
        // And a later touch starts it again.
        until(10, "spinning after a second touch", || {
            s.touch();
            s.is_spinning()
        })
        .await;
    }

    #[tokio::test]
    async fn one_spinner_per_runtime_with_the_longest_window() {
        let (Some(a), Some(b)) = (
            Spinner::shared(Duration::from_micros(10)),
            Spinner::shared(Duration::from_micros(70)),
        ) else {
            assert!(one_cpu());
            return;
        };
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
        assert_eq!(a.inner.window_ns.load(Ordering::Relaxed), 70_000);
        let c = Spinner::shared(Duration::from_micros(20)).unwrap();
        assert_eq!(
            c.inner.window_ns.load(Ordering::Relaxed),
            70_000,
            "a shorter window never shrinks it"
        );
    }

    #[test]
    fn a_runtime_gets_its_own_spinner_and_a_dead_one_is_replaced() {
        let rt = |_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
        };
        let first = rt(());
        let Some(a) = first.block_on(async { Spinner::shared(Duration::from_micros(50)) }) else {
            assert!(one_cpu());
            return;
        };
        let second = rt(());
        let b = second
            .block_on(async { Spinner::shared(Duration::from_micros(50)) })
            .unwrap();
        assert!(!Arc::ptr_eq(&a.inner, &b.inner), "each runtime polls its own reactor");
        drop(first);
        assert!(!a.inner.alive.load(Ordering::Relaxed), "the task went with its runtime");
        a.touch(); // harmless on a dead spinner
        let third = rt(());
        let c = third
            .block_on(async { Spinner::shared(Duration::from_micros(50)) })
            .unwrap();
        assert!(c.inner.alive.load(Ordering::Relaxed));
        assert!(!registered(&a), "the dead spinner left the registry");
    }

    #[tokio::test]
    async fn the_task_ends_with_its_last_handle() {
        let Some(a) = Spinner::shared(Duration::from_micros(50)) else {
            assert!(one_cpu());
            return;
        };
        let b = a.clone();
        let weak = Arc::downgrade(&a.inner);
        drop(a);
        // On this one-thread runtime the task runs, and sees the drop, while this one yields.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            b.inner.alive.load(Ordering::Relaxed) && registered(&b),
            "one handle is left"
        );
        drop(b);
        until(10, "the task ending", || weak.strong_count() == 0).await;
        let all = SPINNERS.lock().unwrap();
        assert!(!all.iter().any(|(_, w)| std::ptr::eq(w.as_ptr(), weak.as_ptr())));
    }
}
