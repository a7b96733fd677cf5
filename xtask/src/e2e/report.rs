//! The e2e test's checks: counted, failures collected instead of stopping at the first.

#[derive(Default)]
pub(super) struct Report {
    pub(super) checks: usize,
    /// Queries that returned nothing but are on the allow-list.
    pub(super) allowed_empty: usize,
    pub(super) failures: Vec<String>,
}

impl Report {
    pub(super) fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.failures.push(what());
        }
    }

    pub(super) fn fail(&mut self, what: String) {
        self.check(false, || what);
    }
}
