//! The overlay: every `serve` setting as an `Option`, filled by the file ([`crate::load_file`])
//! and by the command line, stacked with [`Overlay::merge`] (flags over environment over file;
//! clap folds the environment into the flags), then turned into settings with defaults by
//! [`crate::finish`]. It remembers where each file value was written, so later errors still
//! point at the file.

use crate::origins::pick;
pub use crate::origins::Origins;
pub use crate::settings::{
    AcmeOverlay, AuthOverlay, BalancingOverlay, LimitsOverlay, LockoutOverlay, Overlay, SessionOverlay, TlsOverlay,
};

impl Overlay {
    /// This layer (the flags) over the configuration file, if there is one; not yet validated
    /// across settings (that is [`crate::finish`]).
    pub fn over_file(&self, config: Option<&std::path::Path>) -> Result<Overlay, crate::ConfigErrors> {
        let file = match config {
            Some(path) => crate::load_file(path)?,
            None => Overlay::default(),
        };
        Ok(Overlay::merge(self.clone(), file))
    }

    /// Stacks two layers: each setting from `high` where it has one, else from `low`.
    pub fn merge(mut high: Overlay, mut low: Overlay) -> Overlay {
        let mut o = std::mem::take(&mut low.origins);
        let h = std::mem::take(&mut high.origins);
        // A higher layer's auth default also beats the lower layer's per-site values.
        for (i, site) in low.sites.iter_mut().flatten().enumerate() {
            let mut auth = high.auth.clone();
            AuthOverlay::merge_rows(&mut auth, &mut site.auth, &format!("sites[{i}].auth"), &mut o);
            site.auth = auth;
        }
        let tls = merge_tls(std::mem::take(&mut high.tls), std::mem::take(&mut low.tls), &mut o);
        Overlay::merge_rows(&mut high, &mut low, "", &mut o);
        high.tls = tls;
        high.sites = pick(high.sites.take(), low.sites.take(), "sites", &mut o);
        // Values written in the higher layer's own file, if it has one, win their positions.
        o.absorb(h);
        high.origins = o;
        high
    }
}

/// `tls`: its settings as any section's, then the certificate source as a whole.
fn merge_tls(mut high: TlsOverlay, mut low: TlsOverlay, o: &mut Origins) -> TlsOverlay {
    let files = (high.cert.clone(), high.key.clone());
    let (high_acme, low_acme) = (high.acme.take(), low.acme.take());
    TlsOverlay::merge_rows(&mut high, &mut low, "tls", o);
    if files.0.is_some() || files.1.is_some() {
        // The higher layer chose certificate files: the lower layer's source is gone.
        for p in ["tls.cert", "tls.key", "tls.acme"] {
            o.replace(p);
        }
        (high.cert, high.key) = files;
        high.acme = high_acme;
    } else if let Some(mut acme) = high_acme {
        // The higher layer chose ACME: the lower layer's files are gone, its ACME keys stay.
        o.replace("tls.cert");
        o.replace("tls.key");
        (high.cert, high.key) = (None, None);
        AcmeOverlay::merge_rows(&mut acme, &mut low_acme.unwrap_or_default(), "tls.acme", o);
        high.acme = Some(acme);
    } else {
        high.acme = low_acme;
    }
    high
}
