//! A pipeline against a scripted in-process HTTP backend: order, retries, permanent
//! refusals, replay after a restart, a full queue, and the WAL cap.
//!
//! The pipeline type is `influxdb` because its bodies are plain text: each test batch
//! carries one gauge `batch value=<n>`, so the backend's log says exactly which
//! batches arrived, in which order, how often.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::StatusCode;
use weir_collector::config::{Config, PipelineConfig};
use weir_collector::pipeline::Pipeline;
use weir_collector::serve::{plain, serve};
use weir_core::testing::TempDir;
use weir_core::{Aggregator, FlushBatch, Sample};

/// What the backend answers, in order; when the script is empty it answers 204.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// 503 with `Retry-After: 0`.
    Unavailable,
    /// 400: refused for good.
    BadRequest,
    /// Wait, then 204.
    Slow(Duration),
    /// Wait until the test calls `release`, then 204.
    Hold,
}

#[derive(Default)]
struct Backend {
    script: Mutex<VecDeque<Answer>>,
    /// Releases one held request (or the next one to be held).
    gate: tokio::sync::Notify,
    /// Batch numbers taken (204), in arrival order.
    taken: Mutex<Vec<u64>>,
    /// Requests seen, whatever the answer.
    requests: Mutex<u64>,
}

impl Backend {
    async fn start() -> (Arc<Backend>, SocketAddr, tokio::task::JoinHandle<()>) {
        let backend = Arc::new(Backend::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = backend.clone();
        let task = tokio::spawn(serve(listener, "test backend", move |req| {
            let b = b.clone();
            async move {
                let body = req.into_body().collect().await.unwrap().to_bytes();
                *b.requests.lock().unwrap() += 1;
                let answer = b.script.lock().unwrap().pop_front();
                match answer {
                    Some(Answer::Unavailable) => {
                        let mut r = plain(StatusCode::SERVICE_UNAVAILABLE, "busy");
                        r.headers_mut()
                            .insert("retry-after", hyper::header::HeaderValue::from_static("0"));
                        return r;
                    }
                    Some(Answer::BadRequest) => return plain(StatusCode::BAD_REQUEST, "bad line"),
                    Some(Answer::Slow(d)) => tokio::time::sleep(d).await,
                    Some(Answer::Hold) => b.gate.notified().await,
                    None => {}
                }
                let text = String::from_utf8(body.to_vec()).unwrap();
                // `batch value=<n> <ts>`; other measurements are padding.
                for line in text.lines().filter(|l| l.starts_with("batch ")) {
                    let n = line.split([' ', '=']).nth(2).unwrap();
                    b.taken
                        .lock()
                        .unwrap()
                        .push(n.parse::<f64>().unwrap() as u64);
                }
                plain(StatusCode::NO_CONTENT, "")
            }
        }));
        (backend, addr, task)
    }

    fn script(&self, answers: &[Answer]) {
        self.script.lock().unwrap().extend(answers.iter().copied());
    }

    fn taken(&self) -> Vec<u64> {
        self.taken.lock().unwrap().clone()
    }

    /// Lets one held request go on.
    fn release(&self) {
        self.gate.notify_one();
    }

    /// Waits (bounded) until `n` requests arrived, whatever their answer.
    async fn wait_requests(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while *self.requests.lock().unwrap() < n {
            assert!(Instant::now() < deadline, "request {n} never came");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits (bounded) until `n` batches were taken.
    async fn wait_taken(&self, n: usize) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.taken().len() < n && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.taken()
    }
}

/// A TCP address that refuses every connection for as long as the returned socket
/// lives: the socket holds the port bound but never listens, so the kernel answers
/// each connection attempt with a reset, and (without `SO_REUSEADDR` on it) no other
/// socket can bind the port meanwhile, as one could after a bind-and-close.
fn refusing_address() -> (socket2::Socket, SocketAddr) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    socket.bind(&any.into()).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    (socket, addr)
}

/// A fresh directory for one test's WAL, removed when the test ends (or fails).
fn temp_dir(tag: &str) -> TempDir {
    TempDir::new(&format!("pipeline-{tag}"))
}

fn pipeline_config(addr: &str, extra: &str) -> PipelineConfig {
    let text = format!(
        "[[pipelines]]\nname = \"t\"\ntype = \"influxdb\"\nendpoint = \"http://{addr}\"\n\
         database = \"db\"\ntimeout = \"2s\"\n{extra}\n\
         [pipelines.retry]\ninitial_backoff = \"5ms\"\nmax_backoff = \"20ms\"\n"
    );
    let mut c = Config::from_toml(&text, "test").unwrap();
    c.pipelines.remove(0)
}

/// A batch holding the gauge `batch` = `n`.
fn batch(n: u64) -> FlushBatch {
    let agg = Aggregator::default();
    agg.record("batch", &[], Sample::Gauge(n as f64), 0)
        .unwrap();
    agg.flush()
}

async fn start(config: &PipelineConfig, dir: &Path) -> Pipeline {
    Pipeline::start(config, dir).await.unwrap()
}

#[tokio::test]
async fn batches_arrive_in_order_through_retries_and_refusals() {
    let (backend, addr, _server) = Backend::start().await;
    // Batch 1 is refused three times (retried), batch 2 for good (dropped), batch
    // 3 is slow.
    backend.script(&[
        Answer::Unavailable,
        Answer::Unavailable,
        Answer::Unavailable,
        Answer::Slow(Duration::ZERO),
        Answer::BadRequest,
        Answer::Slow(Duration::from_millis(200)),
    ]);
    let dir = temp_dir("order");
    let p = start(&pipeline_config(&addr.to_string(), ""), &dir).await;
    let mut head = Default::default();
    for n in 1..=5 {
        head = p.accept(&batch(n));
    }
    // Each wait ends at the first failed attempt; retry until delivered (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let outcome = p.wait_delivered(head, Duration::from_secs(20)).await;
        if outcome.delivered {
            break;
        }
        assert!(Instant::now() < deadline, "{outcome:?}");
    }
    assert_eq!(backend.taken(), vec![1, 3, 4, 5]);
    let c = p.counters();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&c.retries), 3);
    assert_eq!(load(&c.failed_batches), 1);
    assert_eq!(load(&c.failed_points), 1);
    assert_eq!(load(&c.sent_batches), 4);
    assert_eq!(*backend.requests.lock().unwrap(), 8);
    let status = p.status();
    assert_eq!(status.wal.unacked_records, 0);
    assert_eq!(status.lag_seconds, 0.0);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn unsent_batches_are_replayed_in_order_after_a_restart() {
    // Nothing listens on this port: every send fails to connect.
    let (_refusing, addr) = refusing_address();
    let dir = temp_dir("replay");
    let config = pipeline_config(&addr.to_string(), "");
    let p = start(&config, &dir).await;
    for n in 1..=3 {
        p.accept(&batch(n));
    }
    let outcome = p.shutdown(Duration::from_millis(100)).await;
    assert!(!outcome.delivered);
    assert!(outcome.error.unwrap().contains("cannot reach"));
    drop(p);

    // A backend comes up (the WAL holds bodies, not addresses); a new pipeline on
    // the same WAL sends the three old batches first, then new ones.
    let (backend2, addr2, _server) = Backend::start().await;
    let config = pipeline_config(&addr2.to_string(), "");
    let p = start(&config, &dir).await;
    assert_eq!(p.status().wal.unacked_records, 3);
    let head = p.accept(&batch(4));
    assert_delivered(&p, head).await;
    assert_eq!(backend2.taken(), vec![1, 2, 3, 4]);
    p.shutdown(Duration::from_secs(1)).await;
    drop(p);
    let requests = *backend2.requests.lock().unwrap();

    // Everything was acknowledged: a third start sends nothing again. The pipeline
    // sends in WAL order, so a batch 5 accepted now is delivered after anything it
    // would replay: once it is, the log holds every batch sent, exactly once.
    let p = start(&config, &dir).await;
    assert_eq!(p.status().wal.unacked_records, 0);
    let head = p.accept(&batch(5));
    assert_delivered(&p, head).await;
    assert_eq!(backend2.taken(), vec![1, 2, 3, 4, 5]);
    assert_eq!(*backend2.requests.lock().unwrap(), requests + 1);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_full_queue_costs_disk_reads_not_batches() {
    let (backend, addr, _server) = Backend::start().await;
    backend.script(&[Answer::Slow(Duration::from_millis(300))]);
    let dir = temp_dir("queue");
    let p = start(
        &pipeline_config(&addr.to_string(), "queue_capacity = 1"),
        &dir,
    )
    .await;
    let mut head = Default::default();
    for n in 1..=20 {
        head = p.accept(&batch(n));
    }
    assert_delivered(&p, head).await;
    assert_eq!(backend.taken(), (1..=20).collect::<Vec<_>>());
    // The forwarder is a task on this test's single-threaded runtime: it cannot run
    // while the loop above accepts, so the ring of one takes batch 1 and the other 19
    // find it full (and are read back from the WAL).
    let queue_full = p
        .counters()
        .queue_full
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(queue_full, 19);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn the_wal_cap_drops_exactly_the_oldest_batches_and_counts_them() {
    let (_refusing, addr) = refusing_address();
    let dir = temp_dir("cap");
    // Padding labels make each batch ~20 KiB, so 1 MiB holds ~50 of them.
    let config = pipeline_config(
        &addr.to_string(),
        "[pipelines.wal]\nmax_bytes = 1048576\nsegment_bytes = 65536",
    );
    let p = start(&config, &dir).await;
    let total = 200u64;
    for n in 1..=total {
        let agg = Aggregator::default();
        agg.record("batch", &[], Sample::Gauge(n as f64), 0)
            .unwrap();
        let pad = "x".repeat(200);
        for i in 0..100 {
            let v = format!("{pad}{i}");
            agg.record("pad", &[("p", v.as_str())], Sample::Gauge(0.0), 0)
                .unwrap();
        }
        p.accept(&agg.flush());
    }
    let status = p.status();
    assert!(status.wal.bytes <= 1 << 20, "{:?}", status.wal);
    let dropped = status.wal.dropped_records;
    assert!(dropped > 0 && dropped < total, "{:?}", status.wal);
    assert!(status.wal.dropped_bytes > 0);
    p.shutdown(Duration::from_millis(50)).await;
    drop(p);

    // Bring a backend up (it ignores the pad lines) and restart: exactly the newest
    // `total - dropped` batches arrive, in order.
    let (backend, addr2, _server) = Backend::start().await;
    let config = pipeline_config(
        &addr2.to_string(),
        "[pipelines.wal]\nmax_bytes = 1048576\nsegment_bytes = 65536",
    );
    let p = start(&config, &dir).await;
    let expected: Vec<u64> = (dropped + 1..=total).collect();
    let taken = backend.wait_taken(expected.len()).await;
    assert_eq!(taken, expected);
    p.shutdown(Duration::from_secs(1)).await;
}

/// Waits (bounded) until the forwarder acknowledged everything before `head`.
async fn assert_delivered(p: &Pipeline, head: weir_core::wal::WalPosition) {
    let outcome = p.wait_delivered(head, Duration::from_secs(20)).await;
    assert!(outcome.delivered, "{:?}", outcome.error);
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn a_batch_whose_append_failed_waits_for_older_batches_only_the_wal_holds() {
    let (backend, addr, _server) = Backend::start().await;
    backend.script(&[Answer::Hold, Answer::Hold]);
    let dir = temp_dir("overflow-order");
    let p = start(
        &pipeline_config(&addr.to_string(), "queue_capacity = 1"),
        &dir,
    )
    .await;
    // Batch 1 goes through the ring; the backend holds it.
    p.accept(&batch(1));
    backend.wait_requests(1).await;
    // Batch 2 fills the ring; batch 3 overflows it and is in the WAL only.
    p.accept(&batch(2));
    p.accept(&batch(3));
    // The forwarder takes batch 2 off the ring; the backend holds it.
    backend.release();
    backend.wait_requests(2).await;
    // Batch 4's append fails: it is in the ring only, and must wait for batch 3.
    p.inject_wal_write_failures(1);
    p.accept(&batch(4));
    backend.release();
    assert_eq!(backend.wait_taken(4).await, vec![1, 2, 3, 4]);
    let c = p.counters();
    assert_eq!(load(&c.queue_full), 1);
    assert_eq!(load(&c.wal_errors), 1);
    assert_eq!(load(&c.dropped_batches), 0);
    assert_eq!(*backend.requests.lock().unwrap(), 4);
    p.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_failed_wal_sync_appends_the_flush_again_and_nothing_is_lost_or_sent_twice() {
    let (backend, addr, _server) = Backend::start().await;
    let dir = temp_dir("sync-failure");
    let config = pipeline_config(&addr.to_string(), "");
    let p = start(&config, &dir).await;
    p.accept(&batch(1));
    // Batch 2's sync fails: it is taken out of the WAL and appended again.
    p.inject_wal_sync_failures(1);
    p.accept(&batch(2));
    let wal = p.status().wal;
    assert_eq!((wal.sync_errors, wal.sync_lost_records), (1, 1));
    // Batch 3's sync fails twice: it goes from memory only, still in its turn.
    p.inject_wal_sync_failures(2);
    p.accept(&batch(3));
    let head = p.accept(&batch(4));
    let wal = p.status().wal;
    assert_eq!((wal.sync_errors, wal.sync_lost_records), (3, 3));
    assert_delivered(&p, head).await;
    assert_eq!(backend.wait_taken(4).await, vec![1, 2, 3, 4]);
    assert_eq!(load(&p.counters().wal_errors), 3);
    p.shutdown(Duration::from_secs(1)).await;
    drop(p);

    // Nothing left to replay: every batch in the WAL was acknowledged.
    let p = start(&config, &dir).await;
    assert_eq!(p.status().wal.unacked_records, 0);
    p.shutdown(Duration::from_secs(1)).await;
    assert_eq!(backend.taken(), vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn a_flush_in_chunks_is_synced_once_and_read_by_the_forwarder_only_once_committed() {
    let (backend, addr, _server) = Backend::start().await;
    backend.script(&[Answer::Hold]);
    let dir = temp_dir("chunks-commit");
    let config = pipeline_config(&addr.to_string(), "");
    let p = start(&config, &dir).await;
    // The forwarder holds batch 0's request while a flush appends three chunks.
    p.accept(&batch(0));
    backend.wait_requests(1).await;
    for n in 1..=3 {
        p.append(&batch(n));
    }
    // Once batch 0 is taken the forwarder reads on from its cursor: the chunks are
    // in the WAL, but not readable before the commit.
    backend.release();
    assert_eq!(backend.wait_taken(1).await, vec![0]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        *backend.requests.lock().unwrap(),
        1,
        "a chunk was sent uncommitted"
    );

    // The commit's one sync fails: it covered all three chunks, which are taken out
    // of the WAL and appended again, and each is sent once.
    p.inject_wal_sync_failures(1);
    let head = p.commit();
    let wal = p.status().wal;
    assert_eq!((wal.sync_errors, wal.sync_lost_records), (1, 3));
    assert_delivered(&p, head).await;
    assert_eq!(backend.wait_taken(4).await, vec![0, 1, 2, 3]);

    for n in 4..=6 {
        p.append(&batch(n));
    }
    let head = p.commit();
    assert_delivered(&p, head).await;
    assert_eq!(backend.wait_taken(7).await, vec![0, 1, 2, 3, 4, 5, 6]);
    p.shutdown(Duration::from_secs(1)).await;
}

/// Sends like a backend that takes everything, but panics on its first send, as a
/// bug in a backend or the forwarder would.
struct PanicsOnce {
    panicked: bool,
    taken: Arc<Mutex<Vec<bytes::Bytes>>>,
}

impl weir_collector::backends::Backend for PanicsOnce {
    fn send(&mut self, body: bytes::Bytes) -> weir_collector::backends::SendFuture<'_> {
        Box::pin(async move {
            if !self.panicked {
                self.panicked = true;
                panic!("injected backend panic");
            }
            self.taken.lock().unwrap().push(body);
            Ok(weir_collector::backends::Sent::default())
        })
    }
}

#[tokio::test]
async fn a_forwarder_that_panics_is_restarted_and_delivers_everything_once_counted() {
    let (refusing, addr) = refusing_address();
    let dir = temp_dir("panic");
    let taken = Arc::new(Mutex::new(Vec::new()));
    let backend = PanicsOnce {
        panicked: false,
        taken: taken.clone(),
    };
    let p = Pipeline::start_with_backend(
        &pipeline_config(&addr.to_string(), ""),
        &dir,
        Box::new(backend),
    )
    .await
    .unwrap();
    p.accept(&batch(1));
    let head = p.accept(&batch(2));
    // Before supervision, the forwarder task died with the panic and this waited
    // out its whole timeout: nothing was ever sent again.
    let outcome = p.wait_delivered(head, Duration::from_secs(20)).await;
    assert!(outcome.delivered, "{outcome:?}");
    let bodies: Vec<String> = taken
        .lock()
        .unwrap()
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    assert!(
        bodies[0].contains("value=1") && bodies[1].contains("value=2"),
        "{bodies:?}"
    );
    let c = p.counters();
    assert_eq!(load(&c.forwarder_restarts), 1);
    assert_eq!(load(&c.sent_batches), 2);
    assert_eq!(p.status().wal.unacked_records, 0);
    p.shutdown(Duration::from_secs(1)).await;
    drop(refusing);
}

#[tokio::test]
async fn status_answers_while_the_wal_is_busy() {
    let (refusing, addr) = refusing_address();
    let dir = temp_dir("busy");
    let p = Arc::new(start(&pipeline_config(&addr.to_string(), ""), &dir).await);
    p.accept(&batch(1));
    // `status` runs on another thread while this one holds the WAL, as an append
    // with its fsync does. Before the snapshot, it waited for the lock: here, for
    // ever (the bound below makes that a failure, not a hang).
    let answered = p.while_wal_is_busy(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        let q = p.clone();
        std::thread::spawn(move || {
            let _ = tx.send(q.status().wal.unacked_records);
        });
        rx.recv_timeout(Duration::from_secs(10))
    });
    assert_eq!(answered, Ok(1), "status waited for the WAL");
    p.shutdown(Duration::from_millis(100)).await;
    drop(refusing);
}
