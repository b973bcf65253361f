//! Sources: where points come in. One module per way in, each turning bytes from the
//! network into aggregator updates, each behind the same small [`Source`] trait.
//!
//! - [`statsd`]: StatsD/DogStatsD over UDP, on dedicated OS threads;
//! - [`statsd_unix`]: StatsD/DogStatsD over a Unix datagram socket, on a dedicated OS
//!   thread;
//! - [`statsd_stream`]: StatsD over TCP and Unix stream sockets, one task per
//!   connection;
//! - [`otlp`]: OTLP metrics over gRPC and HTTP;
//! - [`scrape`]: the Prometheus scraper.
//!
//! Adding a source: a module here with its config section, a type that implements
//! [`Source`], and one line in [`start`].
//!
//! Must never: block a sender (a source that cannot keep up drops and counts, or
//! answers "retry later" where its protocol can say so), or stop without draining
//! what it already accepted into the aggregator.

pub mod otlp;
pub mod scrape;
pub mod statsd;
pub mod statsd_stream;
pub mod statsd_unix;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use weir_core::Aggregator;

use crate::config::Config;
use crate::telemetry::StageMetrics;

/// The future of a source's stop.
pub type StopFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One running source.
pub trait Source: Send {
    /// A short name for logs and the self-metrics registry (`statsd`, `otlp`, `scrape`).
    fn name(&self) -> &'static str;

    /// What it reports in `/metrics` and `/status` (registered by the daemon; asked
    /// again after a reload).
    fn metrics(&self) -> Arc<dyn StageMetrics>;

    /// The connection counters of its listeners, if it has any (reported with the
    /// other listeners' under `weir_listener_*{listener}`).
    fn listeners(&self) -> Vec<(&'static str, Arc<crate::serve::ListenerCounters>)> {
        Vec::new()
    }

    /// The TLS of its listeners, if any: the daemon reloads their certificates on
    /// every config reload and reports their handshakes.
    fn tls(&self) -> Vec<Arc<crate::tls::server::ServerTls>> {
        Vec::new()
    }

    /// Called after every periodic flush, for rate-limited warnings.
    fn after_flush(&mut self) {}

    /// Applies a reloaded config; returns true if this source's section changed and
    /// was applied. Sources whose settings need a restart leave it false (the daemon
    /// reports their section as needing one).
    fn reload(&mut self, _config: &Config, _aggregator: &Aggregator) -> bool {
        false
    }

    /// Stops taking input, puts what was already received into the aggregator (a
    /// bounded drain), logs a summary and ends. Blocking work runs off the async
    /// workers.
    fn stop(self: Box<Self>) -> StopFuture;
}

/// Why a source could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {source_name} receiver on {address}: {error}")]
pub struct SourceError {
    /// Which source.
    pub source_name: &'static str,
    /// The address it could not bind.
    pub address: String,
    /// The I/O error.
    #[source]
    pub error: std::io::Error,
}

impl SourceError {
    /// A constructor for `map_err`.
    pub fn at(
        source_name: &'static str,
        address: impl std::fmt::Display,
    ) -> impl FnOnce(std::io::Error) -> SourceError {
        move |error| SourceError {
            source_name,
            address: address.to_string(),
            error,
        }
    }
}

/// Starts every enabled source of `config`, in a fixed order. The scraper always
/// runs (with no targets it does nothing) so that a reload can add targets.
///
/// # Errors
/// [`SourceError`] for the first source that could not bind its address; the ones
/// started before it are stopped when dropped.
pub async fn start(
    config: &Config,
    aggregator: &Aggregator,
) -> Result<Vec<Box<dyn Source>>, SourceError> {
    let mut sources: Vec<Box<dyn Source>> = Vec::new();
    if let Some(s) = statsd::StatsdSource::start(config, aggregator)? {
        sources.push(Box::new(s));
    }
    if let Some(s) = statsd_unix::StatsdUnixSource::start(config, aggregator)? {
        sources.push(Box::new(s));
    }
    if let Some(s) = statsd_stream::StatsdStreamSource::start_unix(config, aggregator)? {
        sources.push(Box::new(s));
    }
    if let Some(s) = statsd_stream::StatsdStreamSource::start_tcp(config, aggregator)? {
        sources.push(Box::new(s));
    }
    if let Some(s) = otlp::OtlpSource::start(config, aggregator).await? {
        sources.push(Box::new(s));
    }
    sources.push(Box::new(scrape::ScrapeSource::start(config, aggregator)));
    Ok(sources)
}
