//! The engines' journal on a real Kafka broker: a new owner fences the partition and takes
//! up what its predecessor journaled and had not published; a predecessor that thaws after
//! the fence is told it is fenced before it publishes anything; its late entry is void for the
//! next owner.

use suho_domain::UserTopic;
use suho_messaging::kafka::Outgoing;
use suho_security::Identity;
use suho_testkit::TestEnv;
use suho_trading::journal::{Fenced, Journal, Outcome};

fn outcome(event_id: &str) -> Outcome {
    let payload = format!(r#"{{"event_id":"{event_id}","user_id":"usr_1"}}"#);
    Outcome::of(&Outgoing::raw(
        UserTopic::Trades,
        "usr_1",
        payload.as_bytes(),
        None,
    ))
}

fn ids(unpublished: &[(i64, Vec<Outcome>)]) -> Vec<String> {
    unpublished
        .iter()
        .flat_map(|(_, o)| o.iter().filter_map(Outcome::event_id))
        .collect()
}

#[tokio::test]
async fn a_new_owner_fences_the_last_and_takes_up_what_it_had_not_published() {
    let env = TestEnv::new().await;
    let kafka = env.kafka(Identity::Engine);

    // A takes partitions 0 and 1 of a fresh journal: nothing to take up.
    let a = Journal::new(&kafka, "engine-a").expect("journal a");
    let taken = a.take(&[0, 1]).await.expect("a takes");
    assert!(taken
        .values()
        .all(|t| t.unpublished.is_empty() && t.next_command.is_none()));

    // Two batches on partition 0: the first published, the second journaled only.
    let first = a
        .append(vec![(0, Some(5), vec![outcome("exec_1")])])
        .await
        .expect("append 1");
    assert_eq!(a.confirm(&first).await.expect("confirm 1"), Ok(()));
    a.published(0, first[0].1);
    let second = a
        .append(vec![
            (0, Some(9), vec![outcome("exec_2"), outcome("cls_2")]),
            (1, Some(3), vec![outcome("exec_3")]),
        ])
        .await
        .expect("append 2");
    assert_eq!(a.confirm(&second).await.expect("confirm 2"), Ok(()));

    // B takes partition 0 (A froze): A's second batch is what B must make sure is
    // published, and B resumes the commands after it.
    let b = Journal::new(&kafka, "engine-b").expect("journal b");
    let taken = b.take(&[0]).await.expect("b takes");
    let t = &taken[&0];
    assert_eq!(ids(&t.unpublished), ["exec_2", "cls_2"]);
    assert_eq!(t.next_command, Some(9));

    // A thaws and journals another batch: its confirmation finds B's fence first, so A
    // publishes nothing of it. Partition 1, which nobody took, still confirms.
    let late = a
        .append(vec![(0, Some(12), vec![outcome("exec_zombie")])])
        .await
        .expect("a's late append");
    let fenced = a.confirm(&late).await.expect("confirm late");
    match fenced {
        Err(Fenced { partition, by }) => {
            assert_eq!(partition, 0);
            assert!(by.starts_with("engine-b/"), "{by}");
        }
        Ok(()) => panic!("a thawed owner confirmed an entry after the next owner's fence"),
    }
    let other = a
        .append(vec![(1, Some(4), vec![outcome("exec_4")])])
        .await
        .expect("append on 1");
    assert_eq!(a.confirm(&other).await.expect("confirm on 1"), Ok(()));

    // B publishes what it took up, then a batch of its own; C takes over from B and finds
    // only B's unpublished batch: A's late entry is void, and the commands resume after B's.
    b.published(0, t.fence);
    let own = b
        .append(vec![(0, Some(10), vec![outcome("exec_5")])])
        .await
        .expect("b appends");
    assert_eq!(b.confirm(&own).await.expect("b confirms"), Ok(()));
    let c = Journal::new(&kafka, "engine-c").expect("journal c");
    let taken = c.take(&[0]).await.expect("c takes");
    assert_eq!(ids(&taken[&0].unpublished), ["exec_5"]);
    assert_eq!(taken[&0].next_command, Some(10));
}

#[tokio::test]
async fn only_the_engine_may_write_the_journal() {
    let env = TestEnv::new().await;
    let gateway = Journal::new(&env.kafka(Identity::Gateway), "gateway").expect("journal");
    let refused = gateway
        .take(&[0])
        .await
        .expect_err("the gateway may not fence");
    assert!(
        refused.to_string().to_lowercase().contains("authoriz"),
        "{refused}"
    );
}
