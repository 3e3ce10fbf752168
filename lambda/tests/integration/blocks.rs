//! Slot blocks (`vending serve`, `VENDING_BLOCK_MAX`): a process's queued requests
//! share one conditional write; a block never reaches past the limit, never hands a
//! slot twice, never hands one of an activation inside its expiry margin; slots a
//! process never hands out are counted as wasted.

use crate::support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use support::{Answer, Emulator, Server};
use vending::{epoch_now, CurrentActivation, PoolStore, Reservation, SlotBlocks, Wanted, WasteReason};

fn store(emulator: &Emulator, sdk: &aws_config::SdkConfig) -> PoolStore {
    PoolStore::new(aws_sdk_dynamodb::Client::new(sdk), emulator.env_value("VENDING_TABLE"))
}

fn wanted(a: &CurrentActivation) -> Wanted<'_> {
    Wanted {
        fingerprint: &a.fingerprint,
        config_at: a.config_at,
    }
}

fn slot(reservation: Reservation) -> (String, u32) {
    match reservation {
        Reservation::Reserved { activation, .. } => (activation.id, activation.reserved),
        Reservation::Refused(state) => panic!("refused: {state:?}"),
    }
}

/// An emulator, a server that has vended once (slot 1 of a limit-100 activation),
/// and a process's `SlotBlocks` of its own on the same table.
struct Held {
    emulator: Emulator,
    _server: Server,
    store: PoolStore,
    current: CurrentActivation,
    blocks: SlotBlocks,
}

impl Held {
    /// `requests` of this process want a slot at once: one reserve takes a block for
    /// all of them and the first is handed out; then they go away.
    async fn take_one_of_a_block(&self, requests: usize) -> (String, u32) {
        let queue: Vec<_> = (0..requests).map(|_| self.blocks.wanting("default")).collect();
        let first = self
            .blocks
            .reserve("default", epoch_now, 60, wanted(&self.current), 100)
            .await
            .unwrap();
        drop(queue);
        slot(first)
    }
}

async fn one_vend_made() -> Held {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "100")]);
    assert_eq!(server.get("/activation").await.status, 200);
    let sdk = emulator.sdk_config().await;
    let store = store(&emulator, &sdk);
    let current = store.pool("default").await.unwrap().activation.unwrap();
    let blocks = SlotBlocks::new(store.clone(), 8);
    Held {
        emulator,
        _server: server,
        store,
        current,
        blocks,
    }
}

async fn burst(server: &Arc<Server>, requests: usize) -> Vec<Answer> {
    let tasks = (0..requests).map(|_| {
        let server = server.clone();
        tokio::spawn(async move { server.vend_with_retries("/activation", Duration::from_secs(30)).await })
    });
    join_all(tasks).await.into_iter().map(|r| r.expect("task")).collect()
}

/// UpdateItem calls (reserves, and any lease or commit) during `requests` concurrent
/// vends on one warmed-up process.
async fn reserve_writes_for_a_burst(block_max: &str, requests: usize) -> u64 {
    let emulator = Emulator::start();
    let server = Arc::new(emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "1000"), ("VENDING_BLOCK_MAX", block_max)]));
    // The activation, its standby and its code in the cache: only reserves remain.
    assert_eq!(server.get("/activation").await.status, 200);
    assert_eq!(server.get("/activation").await.status, 200);
    emulator.set_latency(20).await;
    emulator.reset_calls().await;
    let answers = burst(&server, requests).await;
    let writes = emulator.calls().await.get("DynamoDB.UpdateItem").copied().unwrap_or(0);
    assert!(answers.iter().all(|a| a.status == 200), "a vend failed");
    emulator.set_latency(0).await;
    emulator.assert_all_register(&answers).await;
    writes
}

#[tokio::test(flavor = "multi_thread")]
async fn a_process_s_queued_requests_share_one_write_per_block() {
    let with_blocks = reserve_writes_for_a_burst("8", 64).await;
    let without = reserve_writes_for_a_burst("1", 64).await;
    eprintln!("UpdateItem calls for 64 concurrent vends: {with_blocks} with blocks of 8, {without} without");
    assert!(without >= 64, "one write per vend without blocks, got {without}");
    assert!(
        with_blocks <= 64 / 4,
        "blocks of up to 8 should need at most 16 writes for 64 queued vends, got {with_blocks}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn blocks_hand_each_slot_once_and_never_past_the_limit_in_a_storm() {
    let emulator = Emulator::start();
    let settings = [("VENDING_REGISTRATION_LIMIT", "10"), ("VENDING_BLOCK_MAX", "8")];
    let servers: Vec<Arc<Server>> = (0..2).map(|_| Arc::new(emulator.serve(&settings))).collect();
    emulator.set_latency(5).await;
    let tasks = (0..120).map(|i| {
        let server = servers[i % 2].clone();
        tokio::spawn(async move { server.vend_with_retries("/activation", Duration::from_secs(60)).await })
    });
    let answers: Vec<Answer> = join_all(tasks).await.into_iter().map(|r| r.expect("task")).collect();
    emulator.set_latency(0).await;
    assert!(answers.iter().all(|a| a.status == 200), "a vend failed");
    let mut per_activation = std::collections::HashMap::<String, usize>::new();
    for a in &answers {
        *per_activation.entry(a.id()).or_default() += 1;
    }
    assert!(per_activation.values().all(|&n| n <= 10), "{per_activation:?}");
    // SSM refuses a registration past an activation's limit: every one lands.
    emulator.assert_all_register(&answers).await;
    let wasted: usize = servers
        .iter()
        .map(|s| s.log_text().lines().filter(|l| l.contains("slots wasted")).count())
        .sum();
    eprintln!(
        "120 vends at limit 10 over 2 processes: {} activations used, {wasted} blocks with wasted slots",
        per_activation.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_is_sized_by_the_queue_and_handed_out_slot_by_slot_without_another_write() {
    let held = one_vend_made().await;
    let now = epoch_now();

    // Five requests of this process want a slot: the first reserve takes five.
    let queue: Vec<_> = (0..5).map(|_| held.blocks.wanting("default")).collect();
    held.emulator.reset_calls().await;
    let mut slots = Vec::new();
    for _ in 0..5 {
        slots.push(slot(
            held.blocks
                .reserve("default", move || now, 60, wanted(&held.current), 100)
                .await
                .unwrap(),
        ));
    }
    drop(queue);
    let writes = held
        .emulator
        .calls()
        .await
        .get("DynamoDB.UpdateItem")
        .copied()
        .unwrap_or(0);
    assert_eq!(writes, 1, "one write for the block of five");
    let numbers: Vec<u32> = slots.iter().map(|(_, n)| *n).collect();
    assert_eq!(numbers, vec![2, 3, 4, 5, 6], "slot 1 went to the warm-up vend");
    assert!(slots.iter().all(|(id, _)| *id == held.current.id));
    assert_eq!(
        held.store.pool("default").await.unwrap().activation.unwrap().reserved,
        6
    );

    // Nobody queued: one slot per write, as without held.blocks.
    let (_, next) = slot(
        held.blocks
            .reserve("default", move || now, 60, wanted(&held.current), 100)
            .await
            .unwrap(),
    );
    assert_eq!(next, 7);
    assert_eq!(held.blocks.release_all(), 0, "nothing held, nothing wasted");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_asks_again_for_what_is_left_and_never_reaches_past_the_limit() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "10"), ("VENDING_LOW_WATER_PERCENT", "0")]);
    for _ in 0..7 {
        assert_eq!(server.get("/activation").await.status, 200);
    }
    let sdk = emulator.sdk_config().await;
    let store = store(&emulator, &sdk);
    let current = store.pool("default").await.unwrap().activation.unwrap();
    assert_eq!(current.reserved, 7);
    // A fresh process (no idea how many are left) with eight requests queued.
    let blocks = SlotBlocks::new(store.clone(), 8);
    let queue: Vec<_> = (0..8).map(|_| blocks.wanting("default")).collect();
    let now = epoch_now();
    let mut taken = HashSet::new();
    for _ in 0..3 {
        let (id, n) = slot(
            blocks
                .reserve("default", move || now, 60, wanted(&current), 10)
                .await
                .unwrap(),
        );
        assert_eq!(id, current.id);
        assert!(taken.insert(n), "slot {n} handed out twice");
    }
    assert_eq!(taken, HashSet::from([8, 9, 10]));
    match blocks
        .reserve("default", move || now, 60, wanted(&current), 10)
        .await
        .unwrap()
    {
        Reservation::Refused(state) => assert_eq!(state.activation.unwrap().reserved, 10),
        Reservation::Reserved { activation, .. } => panic!("slot {} past the limit", activation.reserved),
    }
    drop(queue);
    assert_eq!(store.pool("default").await.unwrap().activation.unwrap().reserved, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_block_inside_the_expiry_margin_is_dropped_and_its_slots_counted_as_wasted() {
    let held = one_vend_made().await;
    let margin = 600;

    // A block of four, of which one is handed out before the queue goes away.
    let queue: Vec<_> = (0..4).map(|_| held.blocks.wanting("default")).collect();
    let (_, first) = slot(
        held.blocks
            .reserve("default", epoch_now, margin, wanted(&held.current), 100)
            .await
            .unwrap(),
    );
    assert_eq!(first, 2);
    drop(queue);

    // Later, the activation has entered its margin: the three held slots go unused and
    // the reserve itself is refused.
    let later = held.current.expires_at - margin + 1;
    match held
        .blocks
        .reserve("default", move || later, margin, wanted(&held.current), 100)
        .await
        .unwrap()
    {
        Reservation::Refused(_) => {}
        Reservation::Reserved { activation, .. } => {
            panic!("handed slot {} inside the expiry margin", activation.reserved)
        }
    }
    assert_eq!(
        held.store.pool("default").await.unwrap().activation.unwrap().reserved,
        5
    );
    assert_eq!(
        held.blocks.release_all(),
        0,
        "the dropped block's slots were counted when it was dropped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopping_process_counts_the_slots_it_holds_as_wasted() {
    let held = one_vend_made().await;
    held.take_one_of_a_block(6).await;
    assert_eq!(held.blocks.release_all(), 5);
    assert_eq!(held.blocks.release_all(), 0, "counted once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_block_of_an_activation_deleted_out_of_band_is_discarded() {
    let held = one_vend_made().await;
    held.take_one_of_a_block(3).await;
    assert_eq!(
        held.blocks
            .discard("default", "some-other-activation", WasteReason::Deleted),
        0
    );
    assert_eq!(
        held.blocks.discard("default", &held.current.id, WasteReason::Deleted),
        2
    );
    assert_eq!(held.blocks.release_all(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promotion_takes_a_block_for_the_queued_requests_in_the_same_write() {
    let emulator = Emulator::start();
    let server = emulator.serve(&[("VENDING_REGISTRATION_LIMIT", "10"), ("VENDING_BLOCK_MAX", "1")]);
    for _ in 0..10 {
        assert_eq!(server.get("/activation").await.status, 200);
    }
    server.log_once_it_says("prepared a standby").await;
    let sdk = emulator.sdk_config().await;
    let store = store(&emulator, &sdk);
    let state = store.pool("default").await.unwrap();
    let (used_up, standby) = (state.activation.unwrap(), state.standby.expect("a standby"));
    assert_eq!(used_up.reserved, 10);

    let blocks = SlotBlocks::new(store.clone(), 8);
    let queue: Vec<_> = (0..5).map(|_| blocks.wanting("default")).collect();
    emulator.reset_calls().await;
    let now = epoch_now();
    let mut slots = Vec::new();
    for _ in 0..5 {
        slots.push(slot(
            blocks
                .reserve("default", move || now, 60, wanted(&standby), 10)
                .await
                .unwrap(),
        ));
    }
    drop(queue);
    let calls = emulator.calls().await;
    assert_eq!(
        calls.get("DynamoDB.UpdateItem"),
        Some(&2),
        "the refused reserve and the promotion with its block: {calls:?}"
    );
    assert!(slots.iter().all(|(id, _)| *id == standby.id), "{slots:?}");
    let numbers: Vec<u32> = slots.iter().map(|(_, n)| *n).collect();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5]);
    let state = store.pool("default").await.unwrap();
    assert_eq!(state.activation.unwrap().reserved, 5);
    assert!(state.standby.is_none());
}
