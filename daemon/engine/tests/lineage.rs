//! History lineage and the failover operations: chain links are stored with the commits (a
//! rebuilt index reproduces them) and replicated (a slave holds its master's links); the link at
//! a TID tells whether one history is a prefix of another; a slave never takes a commit whose
//! link does not fit its history; upgrade, downgrade and rollback are durable, and a rollback cut
//! by a crash is either wholly applied or not at all.

mod common;

use std::path::Path;

use common::{Tree, image, locate, mem_options, name, options, p, pattern, put, tree, write_bytes};
use repld_engine::{
    ApplyBatch, At, Change, Engine, Error, Partial, PfsInfo, PfsName, PfsOptions, Role, Tid,
};

const DEVICE: u64 = 64 << 20;

fn slave_of(e: &Engine, s: &PfsName, master: &PfsInfo) -> PfsInfo {
    e.create_pfs(
        s,
        PfsOptions {
            role: Role::Slave,
            nohistory: false,
            shared_uuid: Some(master.shared_uuid),
        },
    )
    .expect("create the slave")
}

/// The changes of `m` after `after`, with their chunks, as one batch.
fn batch_after(e: &Engine, m: &PfsName, after: Tid) -> ApplyBatch {
    let changes = e.changes_since(m, after, 1000).expect("scan");
    let mut b = ApplyBatch {
        master_head: e.pfs(m).expect("pfs").head,
        ..ApplyBatch::default()
    };
    for c in &changes {
        for r in c.chunk_refs() {
            b.chunks.push(e.read_chunk(&r.hash).expect("chunk").into());
        }
    }
    b.changes = changes;
    b
}

/// Every commit's link, oldest first, and the link at a TID between commits.
fn links(e: &Engine, pfs: &PfsName) -> Vec<(Tid, [u8; 32])> {
    let mut all = e
        .links_between(pfs, Tid::ZERO, Tid::MAX, usize::MAX)
        .expect("links");
    all.reverse();
    all
}

#[test]
fn links_are_stored_with_the_commits_and_a_rebuilt_index_reproduces_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = name("data");
    let e = Engine::open(options(dir.path(), DEVICE)).expect("open");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    assert_eq!(
        e.link_at(&data, Tid::MAX).expect("link"),
        (Tid::ZERO, [0; 32]),
        "an empty history has the zero link"
    );
    let tids: Vec<Tid> = (0..5)
        .map(|i| put(&e, &data, &format!("f{}", i % 3), &pattern(i, 1000)))
        .collect();
    let before = links(&e, &data);
    assert_eq!(
        before.iter().map(|l| l.0).collect::<Vec<_>>(),
        tids,
        "one link per commit"
    );
    let head = e.pfs(&data).expect("pfs");
    assert_eq!(before.last().map(|l| l.1), Some(head.head_chain));
    // The link at a TID between two commits is the earlier commit's: the history up to there.
    let mid = Tid(tids[2].get() + 1);
    assert!(mid < tids[3]);
    assert_eq!(e.link_at(&data, mid).expect("link"), before[2]);
    assert_eq!(
        e.link_at(&data, Tid(tids[0].get() - 1)).expect("link"),
        (Tid::ZERO, [0; 32])
    );
    // Each link continues the one before it over the commit's content.
    let changes = e.changes_since(&data, Tid::ZERO, 100).expect("scan");
    let mut prev = [0; 32];
    for (c, l) in changes.iter().zip(&before) {
        assert_eq!(Change::next_chain(&prev, c.tid, &c.ops), l.1);
        prev = l.1;
    }
    drop(e);

    let mut o = options(dir.path(), DEVICE);
    o.rebuild_index = true;
    let e = Engine::open(o).expect("rebuild the index");
    assert_eq!(
        links(&e, &data),
        before,
        "the rebuilt index has the same links"
    );
    assert_eq!(e.pfs(&data).expect("pfs").head_chain, head.head_chain);
}

#[test]
fn a_slave_holds_its_masters_links_and_the_prefix_check_tells_histories_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(mem_options(dir.path(), DEVICE)).expect("open");
    let (m, s) = (name("m"), name("s"));
    let info = e.create_pfs(&m, PfsOptions::default()).expect("master");
    slave_of(&e, &s, &info);
    for i in 0..3 {
        put(&e, &m, &format!("f{i}"), &pattern(i, 3000));
    }
    e.apply(&s, batch_after(&e, &m, Tid::ZERO)).expect("apply");
    assert_eq!(
        links(&e, &s),
        links(&e, &m),
        "the slave stores the master's links"
    );
    let synced = e.pfs(&s).expect("slave");
    assert!(
        e.has_prefix(&m, synced.head, &synced.head_chain)
            .expect("check")
    );

    // The master goes on: the slave is still a prefix of it.
    put(&e, &m, "later", &pattern(7, 100));
    assert!(
        e.has_prefix(&m, synced.head, &synced.head_chain)
            .expect("check")
    );

    // The slave becomes a master and commits on its own: neither is a prefix of the other any
    // more, and the common TID still is.
    e.upgrade(&s).expect("upgrade");
    put(&e, &s, "own", &pattern(8, 100));
    let s_head = e.pfs(&s).expect("s");
    let m_head = e.pfs(&m).expect("m");
    assert!(
        !e.has_prefix(&m, s_head.head, &s_head.head_chain)
            .expect("check")
    );
    assert!(
        !e.has_prefix(&s, m_head.head, &m_head.head_chain)
            .expect("check")
    );
    assert_eq!(
        e.link_at(&m, synced.head).expect("m"),
        e.link_at(&s, synced.head).expect("s")
    );
}

#[test]
fn a_slave_refuses_a_change_whose_link_does_not_fit_its_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Engine::open(mem_options(dir.path(), DEVICE)).expect("open");
    let (m, s) = (name("m"), name("s"));
    let info = e.create_pfs(&m, PfsOptions::default()).expect("master");
    slave_of(&e, &s, &info);
    put(&e, &m, "a", &pattern(1, 100));
    put(&e, &m, "b", &pattern(2, 100));
    let all = batch_after(&e, &m, Tid::ZERO);
    let mut first = all.clone();
    first.changes.truncate(1);
    e.apply(&s, first.clone()).expect("apply the first");
    let head = e.pfs(&s).expect("s").head;

    // The same TID with another link (another master's history): refused, not skipped.
    let mut other = first.clone();
    other.changes[0].chain[0] ^= 1;
    assert!(
        matches!(e.apply(&s, other), Err(Error::Diverged { .. })),
        "an applied TID with another link is another history"
    );
    // The next change with a link that does not continue the slave's.
    let mut next = all.clone();
    next.changes.remove(0);
    next.changes[0].chain[5] ^= 1;
    assert!(matches!(e.apply(&s, next), Err(Error::Diverged { .. })));
    assert_eq!(e.pfs(&s).expect("s").head, head, "nothing was applied");
    e.apply(&s, all)
        .expect("the master's own changes still apply");
    assert_eq!(links(&e, &s), links(&e, &m));
}

#[test]
fn upgrade_drops_a_partly_received_tid_and_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (m, s) = (name("m"), name("s"));
    let e = Engine::open(mem_options(dir.path(), DEVICE)).expect("open");
    let info = e.create_pfs(&m, PfsOptions::default()).expect("master");
    slave_of(&e, &s, &info);
    put(&e, &m, "a", &pattern(1, 100));
    let big = put(&e, &m, "big", &pattern(2, 3 << 20));
    let mut b = batch_after(&e, &m, Tid::ZERO);
    // The first change whole, and one chunk of the big one: a partly received TID.
    b.changes.truncate(1);
    b.chunks.truncate(2);
    b.partial = Some(Partial {
        tid: big,
        chunks_done: 1,
    });
    let cp = e.apply(&s, b).expect("apply");
    assert_eq!(cp.partial.map(|x| x.tid), Some(big));
    assert!(matches!(e.downgrade(&s), Err(Error::Invalid(_))));

    let up = e.upgrade(&s).expect("upgrade");
    assert_eq!(
        up.dropped,
        Some(Partial {
            tid: big,
            chunks_done: 1
        })
    );
    assert_eq!(up.info.role, Role::Master);
    assert_eq!(up.info.partial, None);
    assert_eq!(up.info.head, cp.synced, "a master at its synced TID");
    assert!(matches!(e.upgrade(&s), Err(Error::Invalid(_))));
    let t = put(&e, &s, "own", &pattern(3, 10));
    assert!(t > cp.synced);
    drop(e);

    let e = Engine::open(mem_options(dir.path(), DEVICE)).expect("reopen (rebuild)");
    let again = e.pfs(&s).expect("s");
    assert_eq!(
        (again.role, again.partial, again.head),
        (Role::Master, None, t)
    );
    assert!(e.stat(&s, &p("big"), &At::Head).is_err());
}

#[test]
fn downgrade_makes_a_master_a_read_only_slave_with_its_history() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = name("data");
    let e = Engine::open(options(dir.path(), DEVICE)).expect("open");
    e.create_pfs(&data, PfsOptions::default()).expect("create");
    let t = put(&e, &data, "a", &pattern(1, 100));
    let before = tree(&e, &data, &At::Head);
    let info = e.downgrade(&data).expect("downgrade");
    assert_eq!((info.role, info.head), (Role::Slave, t));
    assert!(matches!(e.begin(&data), Err(Error::ReadOnlySlave(_))));
    drop(e);
    let e = Engine::open(options(dir.path(), DEVICE)).expect("reopen");
    assert_eq!(e.pfs(&data).expect("pfs").role, Role::Slave);
    assert_eq!(tree(&e, &data, &At::Head), before);
}

/// A PFS with a file changed, deleted and added over six commits, and a snapshot at each TID.
fn diverged_history(e: &Engine, data: &PfsName) -> Vec<(Tid, Tree)> {
    e.create_pfs(data, PfsOptions::default()).expect("create");
    let mut out = Vec::new();
    for i in 0..6u64 {
        let t = match i {
            3 => {
                let mut tx = e.begin(data).expect("begin");
                tx.delete(&p("f0"), false).expect("delete");
                tx.commit().expect("commit").expect("changed")
            }
            _ => put(e, data, &format!("f{}", i % 2), &pattern(i, 2000)),
        };
        e.snapshot_create(data, &format!("s{i}"), None)
            .expect("snapshot");
        out.push((t, tree(e, data, &At::Head)));
    }
    out
}

fn assert_rolled_back(e: &Engine, data: &PfsName, history: &[(Tid, Tree)], to: usize) {
    let info = e.pfs(data).expect("pfs");
    assert_eq!(info.head, history[to].0);
    assert_eq!(
        info.head_chain,
        e.link_at(data, history[to].0).expect("link").1
    );
    assert_eq!(tree(e, data, &At::Head), history[to].1);
    for (tid, want) in &history[..=to] {
        assert_eq!(&tree(e, data, &At::Tid(*tid)), want, "state at {tid}");
    }
    // Reads at the discarded TIDs see the rolled-back state, not the discarded commits.
    for (tid, _) in &history[to + 1..] {
        assert_eq!(
            tree(e, data, &At::Tid(*tid)),
            history[to].1,
            "state at {tid}"
        );
    }
    assert_eq!(
        links(e, data).len(),
        to + 1,
        "the discarded commits' links are gone"
    );
    let snaps: Vec<String> = e
        .snapshot_list(data)
        .expect("snapshots")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        snaps.len(),
        to + 1,
        "snapshots of discarded TIDs go: {snaps:?}"
    );
    assert!(
        e.changes_since(data, history[to].0, 100)
            .expect("scan")
            .is_empty()
    );
}

#[test]
fn rollback_discards_the_later_commits_and_a_rebuilt_index_agrees() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = name("data");
    let e = Engine::open(options(dir.path(), DEVICE)).expect("open");
    let history = diverged_history(&e, &data);
    assert!(matches!(
        e.rollback(&data, Tid(history[5].0.get() + 10)),
        Err(Error::Invalid(_))
    ));
    let r = e.rollback(&data, history[2].0).expect("rollback");
    assert_eq!(r.commits, 3);
    assert_eq!(r.range, Some((history[3].0, history[5].0)));
    assert_rolled_back(&e, &data, &history, 2);
    // New commits continue from the rolled-back head.
    let t = put(&e, &data, "after", &pattern(9, 10));
    let mut want = history[2].1.clone();
    want.insert("after".into(), Some(pattern(9, 10)));
    assert_eq!(tree(&e, &data, &At::Head), want);
    let kept = links(&e, &data);
    drop(e);

    let mut o = options(dir.path(), DEVICE);
    o.rebuild_index = true;
    let e = Engine::open(o).expect("rebuild");
    assert_eq!(links(&e, &data), kept);
    assert_eq!(e.pfs(&data).expect("pfs").head, t);
    assert_eq!(tree(&e, &data, &At::Head), want);
    for (tid, tr) in &history[..=2] {
        assert_eq!(&tree(&e, &data, &At::Tid(*tid)), tr);
    }
}

#[test]
fn rollback_is_refused_where_history_is_not_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = name("data");
    let e = Engine::open(mem_options(dir.path(), DEVICE)).expect("open");
    e.create_pfs(
        &data,
        PfsOptions {
            nohistory: true,
            ..PfsOptions::default()
        },
    )
    .expect("create");
    let t = put(&e, &data, "a", &pattern(1, 10));
    put(&e, &data, "a", &pattern(2, 10));
    let e2 = e.rollback(&data, t).expect_err("nohistory");
    assert!(e2.to_string().contains("pruned"), "{e2}");
}

fn reopen_rolled_back_or_not(dir: &Path, data: &PfsName, history: &[(Tid, Tree)]) -> Tid {
    let e = Engine::open(mem_options(dir, DEVICE)).expect("reopen");
    let head = e.pfs(data).expect("pfs").head;
    if head == history[1].0 {
        assert_rolled_back(&e, data, history, 1);
    } else {
        assert_eq!(head, history[5].0);
        assert_eq!(tree(&e, data, &At::Head), history[5].1);
        assert_eq!(links(&e, data).len(), 6, "nothing was discarded");
    }
    head
}

#[test]
fn a_rollback_cut_by_a_crash_is_wholly_applied_or_not_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = name("data");
    let e = Engine::open(mem_options(dir.path(), DEVICE)).expect("open");
    let history = diverged_history(&e, &data);
    let (r, unit) = locate(&image(dir.path()), || e.rollback(&data, history[1].0));
    r.expect("rollback");
    drop(e);
    let saved = common::read_bytes(&image(dir.path()), unit.start, unit.len as usize);

    // Durable once acknowledged: a reopen that replays the log applies it.
    assert_eq!(
        reopen_rolled_back_or_not(dir.path(), &data, &history),
        history[1].0
    );
    // Its unit never reached the disk whole (zeroed, or a flipped bit in it): it is cut as a
    // torn tail, and nothing is discarded.
    write_bytes(&image(dir.path()), unit.start, &vec![0; unit.len as usize]);
    assert_eq!(
        reopen_rolled_back_or_not(dir.path(), &data, &history),
        history[5].0
    );
    write_bytes(&image(dir.path()), unit.start, &saved);
    // The rollback record follows the unit header; a bit of its TID flipped fails its CRC.
    common::flip_bit(
        &image(dir.path()),
        unit.start + common::UNIT_HEADER + 12 + 6,
        3,
    );
    assert_eq!(
        reopen_rolled_back_or_not(dir.path(), &data, &history),
        history[5].0
    );
}
