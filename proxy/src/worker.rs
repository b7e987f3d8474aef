//! Worker primitives: how many worker threads serve connections, which one is running, and
//! [`PerWorker`], one value per worker so the request path never writes memory another worker
//! writes. The lowest layer: it imports nothing of the crate.

/// How many worker threads serve connections: one per CPU this process may use (cgroup quotas and
/// affinity included), fixed at the first call.
pub fn worker_count() -> usize {
    static COUNT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *COUNT.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

thread_local! {
    static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the calling thread as worker `index`, once, as the thread starts.
pub(crate) fn set_worker_index(index: usize) {
    WORKER_INDEX.with(|w| w.set(index));
}

/// The calling worker thread's index (0 on any other thread).
pub fn worker_index() -> usize {
    WORKER_INDEX.with(std::cell::Cell::get)
}

/// One `T` per worker thread, each used by its own worker (others use the first): what the
/// request path writes (reference counts, counters, pools) is kept this way so two workers never
/// write the same memory.
#[derive(Debug)]
pub struct PerWorker<T>(Box<[T]>);

impl<T> PerWorker<T> {
    /// One `make()` for each worker.
    pub fn new(mut make: impl FnMut() -> T) -> Self {
        PerWorker((0..worker_count()).map(|_| make()).collect())
    }

    /// The calling worker's own.
    pub fn get(&self) -> &T {
        &self.0[worker_index() % self.0.len()]
    }

    /// Every worker's, to add them up.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}
