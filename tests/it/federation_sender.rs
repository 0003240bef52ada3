//! The outbound side of federation transactions (spec, server-server API, "Transactions",
//! `PUT /_matrix/federation/v1/send/{txnId}`), tested as a library: `Services` opened on a
//! temporary data directory with federation on, the sender started on a runtime of the test,
//! and PDUs and EDUs queued for fake servers (`support::fake_server`) on their own
//! 127.0.0.6x addresses, which record the transactions they get. Rooms cannot be joined over
//! federation yet, so nothing here goes through the client API.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use hearth::services::{
    Services,
    federation::{remote_keys::key_map, sender},
};
use ruma::{EventId, OwnedServerName, ServerName, api::federation::authentication::XMatrix};
use serde_json::json;

use crate::support::{
    fake_server::{FakeServer, Mode, Received},
    federation::TestCa,
};

const OUR_NAME: &str = "sender.test";

/// A Hearth library instance: the services and the runtime their sender runs on.
struct Node {
    // Dropped first: its tasks (which may hold the services) end with it.
    runtime: tokio::runtime::Runtime,
    services: Arc<Services>,
}

impl Node {
    /// Opens the services on `data` (federation on or off) and starts the sender.
    fn start(data: &Path, ca: &TestCa, federation: bool) -> Node {
        Self::start_with(data, ca, federation, &[])
    }

    /// [`Node::start`] with more `HEARTH_*` settings.
    fn start_with(data: &Path, ca: &TestCa, federation: bool, extra: &[(&str, &str)]) -> Node {
        let mut env: Vec<(String, String)> = [
            ("HEARTH_DATABASE__PATH", data.display().to_string()),
            ("HEARTH_SERVER_NAME", OUR_NAME.to_owned()),
            ("HEARTH_FEDERATION__ENABLED", federation.to_string()),
            ("HEARTH_FEDERATION__ALLOW_PRIVATE_DESTINATIONS", "true".to_owned()),
            ("HEARTH_FEDERATION__EXTRA_CA_FILE", ca.ca_file.display().to_string()),
        ]
        .map(|(k, v)| (k.to_owned(), v))
        .into();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = hearth::config::load(None, env, &hearth::config::Overrides::default()).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let services = runtime.block_on(async {
            let services = Services::open(config).unwrap();
            sender::spawn(&services);
            services
        });
        Node { runtime, services }
    }

    /// Queues PDUs `range` (event `$ev{n}`, content `{"n": n}`) for `destinations`, one by one.
    fn queue(&self, destinations: &[&str], range: std::ops::Range<u64>) {
        let destinations: Vec<OwnedServerName> = destinations.iter().map(|d| d.parse().unwrap()).collect();
        self.runtime.block_on(async {
            for n in range {
                let event_id = EventId::parse(format!("$ev{n}")).unwrap();
                let pdu = serde_json::to_vec(&json!({"n": n, "type": "m.room.message"})).unwrap();
                self.services
                    .federation
                    .queue_pdu(&destinations, &event_id, &pdu)
                    .await
                    .unwrap();
            }
        });
    }

    fn queue_edu(&self, destination: &str, n: u64) {
        let destination: OwnedServerName = destination.parse().unwrap();
        self.services.federation.queue_edu(
            &[destination],
            json!({"edu_type": "m.typing", "content": {"room_id": "!r:sender.test", "user_id": "@u:sender.test", "typing": true, "n": n}}),
        );
    }

    fn queued(&self, destination: &str) -> usize {
        let name = ServerName::parse(destination).unwrap();
        self.services.federation.sender.queued_pdus(&name).unwrap()
    }
}

/// Waits (at most 60 s, polling) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The transactions answered 200.
fn delivered(server: &FakeServer) -> Vec<Received> {
    server.received().into_iter().filter(|r| r.status == 200).collect()
}

/// The `n` of every PDU in `transactions`, in order.
fn pdu_numbers(transactions: &[Received]) -> Vec<u64> {
    transactions
        .iter()
        .flat_map(|t| t.body["pdus"].as_array().cloned().unwrap_or_default())
        .map(|pdu| pdu["n"].as_u64().unwrap())
        .collect()
}

fn edu_numbers(transactions: &[Received]) -> Vec<u64> {
    transactions
        .iter()
        .flat_map(|t| t.body["edus"].as_array().cloned().unwrap_or_default())
        .map(|edu| edu["content"]["n"].as_u64().unwrap())
        .collect()
}

fn txn_id(request: &Received) -> &str {
    request
        .path
        .strip_prefix("/_matrix/federation/v1/send/")
        .unwrap_or_else(|| panic!("not a transaction: {} {}", request.method, request.path))
}

/// 120 PDUs reach one destination in queue order, each once, in transactions of at most 50,
/// signed by us for it, with never more than one transaction in flight; our own name is
/// never queued for.
#[test]
fn pdus_arrive_in_order_in_transactions_of_at_most_fifty() {
    let ca = TestCa::new();
    let receiver = FakeServer::start(&ca, "127.0.0.61");
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path(), &ca, true);
    // The first transaction is held while the rest is queued, so the next ones are full.
    receiver.set_mode(Mode::Hang);
    node.queue(&[&receiver.name, OUR_NAME], 0..1);
    wait_until("the first transaction is held", || receiver.in_flight() == 1);
    node.queue(&[&receiver.name, OUR_NAME], 1..120);
    receiver.release();
    wait_until("120 PDUs arrived", || pdu_numbers(&delivered(&receiver)).len() >= 120);
    wait_until("the queue is empty", || node.queued(&receiver.name) == 0);

    let transactions = delivered(&receiver);
    assert_eq!(pdu_numbers(&transactions), (0..120).collect::<Vec<_>>());
    let sizes: Vec<usize> = transactions
        .iter()
        .map(|t| t.body["pdus"].as_array().unwrap().len())
        .collect();
    assert!(sizes.iter().all(|&n| n <= 50), "{sizes:?}");
    assert!(
        sizes.contains(&50),
        "the PDUs queued meanwhile share transactions: {sizes:?}"
    );
    let mut ids: Vec<&str> = transactions.iter().map(txn_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), transactions.len(), "one transaction id per transaction");
    for t in &transactions {
        assert_eq!(t.method, "PUT");
        assert_eq!(t.origin.as_deref(), Some(OUR_NAME));
        assert_eq!(t.destination.as_deref(), Some(receiver.name.as_str()));
        assert_eq!(t.body["origin"], OUR_NAME);
        assert!(t.body["origin_server_ts"].as_u64().is_some());
    }
    let keys = &node.services.server_keys;
    let our_key = key_map(
        ServerName::parse(OUR_NAME).unwrap().as_ref(),
        &keys.key_id(),
        &keys.public_key(),
    );
    for t in &transactions {
        let authorization = t.authorization.as_deref().unwrap();
        let request = http::Request::builder()
            .method("PUT")
            .uri(&t.path)
            .header(http::header::AUTHORIZATION, authorization)
            .body(t.raw_body.as_slice())
            .unwrap();
        let x_matrix = XMatrix::parse(authorization).unwrap();
        let destination = ServerName::parse(&receiver.name).unwrap();
        x_matrix
            .verify_http_request(&request, &destination, &our_key)
            .expect("signed with our key");
    }
    assert_eq!(receiver.max_in_flight(), 1);
    assert_eq!(receiver.received().len(), transactions.len(), "no retries");
    assert_eq!(node.queued(OUR_NAME), 0, "nothing is queued for ourselves");
}

/// EDUs go in the same transactions, at most 100 each, in order; at most 1,000 wait per
/// destination (the oldest dropped).
#[test]
fn edus_ride_along_at_most_one_hundred_per_transaction() {
    let ca = TestCa::new();
    let receiver = FakeServer::start(&ca, "127.0.0.62");
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path(), &ca, true);
    receiver.set_mode(Mode::Hang);
    node.queue(&[&receiver.name], 0..1);
    wait_until("the first transaction is held", || receiver.in_flight() == 1);
    node.queue(&[&receiver.name], 1..3);
    for n in 0..1_050 {
        node.queue_edu(&receiver.name, n);
    }
    receiver.release();
    wait_until("the EDUs arrived", || {
        edu_numbers(&delivered(&receiver)).last() == Some(&1_049)
    });
    let transactions = delivered(&receiver);
    assert_eq!(
        edu_numbers(&transactions),
        (50..1_050).collect::<Vec<_>>(),
        "the newest 1,000, in order, once"
    );
    assert_eq!(pdu_numbers(&transactions), vec![0, 1, 2]);
    let sizes: Vec<usize> = transactions
        .iter()
        .map(|t| t.body["edus"].as_array().map_or(0, Vec::len))
        .collect();
    assert!(sizes.iter().all(|&n| n <= 100), "{sizes:?}");
    assert_eq!(sizes[1], 100, "the PDUs queued meanwhile carry EDUs: {sizes:?}");
    assert_eq!(
        transactions[1].body["pdus"].as_array().unwrap().len(),
        2,
        "with the PDUs queued meanwhile"
    );
    assert_eq!(transactions[1].body["edus"][0]["edu_type"], "m.typing");
}

/// A destination answering 503 gets the same transaction (same id, same PDUs) again after
/// the back-off, and everything once it answers.
#[test]
fn a_failing_destination_gets_the_same_transaction_again_then_everything() {
    let ca = TestCa::new();
    let receiver = FakeServer::start(&ca, "127.0.0.63");
    receiver.set_mode(Mode::Unavailable);
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path(), &ca, true);
    node.queue(&[&receiver.name], 0..3);
    wait_until("two attempts failed", || receiver.received().len() >= 2);
    let name = ServerName::parse(&receiver.name).unwrap();
    assert!(node.services.federation.sender.is_backing_off(&name));
    node.queue(&[&receiver.name], 3..5);
    receiver.set_mode(Mode::Answer);
    wait_until("5 PDUs arrived", || pdu_numbers(&delivered(&receiver)).len() >= 5);
    let all = receiver.received();
    let first = delivered(&receiver)[0].clone();
    assert_eq!(txn_id(&all[0]), txn_id(&all[1]), "a retry keeps its transaction id");
    assert_eq!(txn_id(&first), txn_id(&all[0]));
    assert_eq!(all[0].body["pdus"], all[1].body["pdus"]);
    assert_eq!(first.body["pdus"], all[0].body["pdus"], "and its content");
    assert_eq!(pdu_numbers(&delivered(&receiver)), vec![0, 1, 2, 3, 4]);
    wait_until("the queue is empty", || node.queued(&receiver.name) == 0);
    assert!(!node.services.federation.sender.is_backing_off(&name));
    assert_eq!(receiver.max_in_flight(), 1);
}

/// A destination that refuses connections and comes back gets everything queued meanwhile;
/// `peer_is_back` sends it at once although the back-off (an hour here) is not over.
#[test]
fn a_destination_that_was_down_gets_everything_once_it_is_back() {
    let ca = TestCa::new();
    let receiver = FakeServer::start(&ca, "127.0.0.64");
    receiver.stop();
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path(), &ca, true);
    let sender = &node.services.federation.sender;
    let hour = Duration::from_secs(3600);
    sender.set_backoff_for_tests(hour, hour);
    let name = ServerName::parse(&receiver.name).unwrap();
    node.queue(&[&receiver.name], 0..10);
    wait_until("the first attempt failed", || sender.is_backing_off(&name));
    node.queue(&[&receiver.name], 10..20);
    receiver.resume();
    // Queuing does not end a back-off.
    std::thread::sleep(Duration::from_millis(500));
    assert!(receiver.received().is_empty());
    assert_eq!(node.queued(&receiver.name), 20);
    node.services.federation.peer_is_back(&name);
    wait_until("20 PDUs arrived", || pdu_numbers(&delivered(&receiver)).len() >= 20);
    assert_eq!(pdu_numbers(&delivered(&receiver)), (0..20).collect::<Vec<_>>());
    wait_until("the queue is empty", || node.queued(&receiver.name) == 0);
}

/// PDUs queued while the destination is down survive a restart and are delivered by the
/// next process.
#[test]
fn queued_pdus_survive_a_restart() {
    let ca = TestCa::new();
    let receiver = FakeServer::start(&ca, "127.0.0.65");
    receiver.stop();
    let data = tempfile::tempdir().unwrap();
    {
        let node = Node::start(data.path(), &ca, true);
        node.queue(&[&receiver.name], 0..30);
        let name = ServerName::parse(&receiver.name).unwrap();
        wait_until("the first attempt failed", || {
            node.services.federation.sender.is_backing_off(&name)
        });
        assert_eq!(node.queued(&receiver.name), 30);
    }
    receiver.resume();
    let node = Node::start(data.path(), &ca, true);
    wait_until("30 PDUs arrived", || pdu_numbers(&delivered(&receiver)).len() >= 30);
    assert_eq!(pdu_numbers(&delivered(&receiver)), (0..30).collect::<Vec<_>>());
    wait_until("the queue is empty", || node.queued(&receiver.name) == 0);
}

/// A destination that holds its transaction does not hold up another one.
#[test]
fn a_slow_destination_does_not_delay_another() {
    let ca = TestCa::new();
    let slow = FakeServer::start(&ca, "127.0.0.66");
    let fast = FakeServer::start(&ca, "127.0.0.67");
    slow.set_mode(Mode::Hang);
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path(), &ca, true);
    node.queue(&[&slow.name, &fast.name], 0..5);
    wait_until("the slow server holds a transaction", || slow.in_flight() == 1);
    wait_until("the fast server has everything", || {
        pdu_numbers(&delivered(&fast)).len() >= 5
    });
    assert_eq!(pdu_numbers(&delivered(&fast)), (0..5).collect::<Vec<_>>());
    assert_eq!(slow.in_flight(), 1, "still held");
    assert!(slow.received().is_empty());
    slow.release();
    wait_until("the slow server has everything", || {
        pdu_numbers(&delivered(&slow)).len() >= 5
    });
    assert_eq!(pdu_numbers(&delivered(&slow)), (0..5).collect::<Vec<_>>());
}

/// At most so many transactions are in flight at once, all destinations together (50; 2
/// here): a destination beyond that waits for one to finish.
#[test]
fn transactions_in_flight_are_bounded_overall() {
    let ca = TestCa::new();
    // Three servers on one address, each on its own port.
    let servers: Vec<FakeServer> = (0..3).map(|_| FakeServer::start(&ca, "127.0.0.69")).collect();
    for server in &servers {
        server.set_mode(Mode::Hang);
    }
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path(), &ca, true);
    node.services.federation.sender.set_max_in_flight_for_tests(2);
    let names: Vec<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    node.queue(&names, 0..1);
    let held = || servers.iter().map(FakeServer::in_flight).sum::<usize>();
    wait_until("two transactions are held", || held() == 2);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(held(), 2, "a third waits");
    let first = servers.iter().find(|s| s.in_flight() == 1).unwrap();
    first.release();
    wait_until("the third is sent", || {
        servers.iter().filter(|s| s.max_in_flight() == 1).count() == 3
    });
    for server in &servers {
        server.release();
    }
    for server in &servers {
        wait_until("every server has the PDU", || {
            pdu_numbers(&delivered(server)) == vec![0]
        });
    }
}

/// A server we do not federate with (`denied_servers`) gets nothing queued and nothing sent,
/// PDUs or EDUs; the others still get theirs.
#[test]
fn a_denied_server_gets_nothing() {
    let ca = TestCa::new();
    let denied = FakeServer::start(&ca, "127.0.0.60");
    let allowed = FakeServer::start(&ca, "127.0.0.60");
    let data = tempfile::tempdir().unwrap();
    let pattern = format!("[\"{}\"]", denied.name);
    let node = Node::start_with(
        data.path(),
        &ca,
        true,
        &[("HEARTH_FEDERATION__DENIED_SERVERS", pattern.as_str())],
    );
    node.queue(&[&denied.name, &allowed.name], 0..3);
    node.queue_edu(&denied.name, 0);
    node.queue_edu(&allowed.name, 0);
    assert_eq!(node.queued(&denied.name), 0);
    wait_until("the allowed server has everything", || {
        let got = delivered(&allowed);
        pdu_numbers(&got).len() >= 3 && !edu_numbers(&got).is_empty()
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(denied.received().is_empty());
}

/// With federation off nothing is queued and nothing is sent.
#[test]
fn nothing_is_queued_or_sent_with_federation_off() {
    let ca = TestCa::new();
    let receiver = FakeServer::start(&ca, "127.0.0.68");
    let data = tempfile::tempdir().unwrap();
    let node = Node::start(data.path(), &ca, false);
    node.queue(&[&receiver.name], 0..3);
    node.queue_edu(&receiver.name, 0);
    assert_eq!(node.queued(&receiver.name), 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(receiver.received().is_empty());
}
