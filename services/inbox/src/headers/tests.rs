use proptest::prelude::*;

use super::*;

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

#[test]
fn reads_attempts_of_any_integer_shape() {
    assert_eq!(attempts_made(None), 0);
    assert_eq!(attempts_made(Some(&table(&[(ATTEMPT, AMQPValue::LongLongInt(3))]))), 3);
    assert_eq!(attempts_made(Some(&table(&[(ATTEMPT, AMQPValue::LongInt(2))]))), 2);
    assert_eq!(attempts_made(Some(&table(&[(ATTEMPT, long("4"))]))), 4);
    assert_eq!(attempts_made(Some(&table(&[(ATTEMPT, AMQPValue::LongLongInt(-7))]))), 0);
    assert_eq!(attempts_made(Some(&table(&[(ATTEMPT, long("many"))]))), 0);
}

fn death(queue: &str, reason: &str) -> AMQPValue {
    AMQPValue::FieldTable(table(&[
        ("queue", long(queue)),
        ("reason", long(reason)),
        ("count", AMQPValue::LongLongInt(1)),
    ]))
}

#[test]
fn attempts_are_believed_only_back_from_a_retry_tier() {
    let tier = |queue: &str| queue == "q.retry.1s";
    let forged = table(&[(ATTEMPT, AMQPValue::LongLongInt(99))]);
    assert_eq!(trusted_attempts(Some(&forged), tier), 0);
    let returned = table(&[
        (ATTEMPT, AMQPValue::LongLongInt(2)),
        ("x-death", AMQPValue::FieldArray(vec![death("q.retry.1s", "expired")].into())),
    ]);
    assert_eq!(trusted_attempts(Some(&returned), tier), 2);
    for (queue, reason) in [("elsewhere", "expired"), ("q.retry.1s", "rejected")] {
        let other = table(&[
            (ATTEMPT, AMQPValue::LongLongInt(2)),
            ("x-death", AMQPValue::FieldArray(vec![death(queue, reason)].into())),
        ]);
        assert_eq!(trusted_attempts(Some(&other), tier), 0, "{queue} {reason}");
    }
    assert_eq!(trusted_attempts(None, tier), 0);
}

#[test]
fn dead_letter_headers_keep_the_originals_and_add_the_reason() {
    let original = table(&[
        (CORRELATION_ID, long("corr-1")),
        ("traceparent", long("00-abc")),
        ("x-death", AMQPValue::Void),
        (ATTEMPT, AMQPValue::LongLongInt(2)),
    ]);
    let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z").unwrap().with_timezone(&Utc);
    let headers = dead_letter_headers(Some(&original), 3, DeadLetterReason::MaxAttemptsExceeded, "boom", "q.main", at);
    let h = Some(&headers);
    assert_eq!(text(h, CORRELATION_ID).as_deref(), Some("corr-1"));
    assert_eq!(text(h, "traceparent").as_deref(), Some("00-abc"));
    assert_eq!(attempts_made(h), 3);
    assert_eq!(text(h, REASON).as_deref(), Some("max_attempts_exceeded"));
    assert_eq!(text(h, ERROR).as_deref(), Some("boom"));
    assert_eq!(text(h, SOURCE_QUEUE).as_deref(), Some("q.main"));
    assert_eq!(text(h, DEAD_LETTERED_AT).as_deref(), Some("2026-01-02T03:04:05.678Z"));
    assert!(!headers.contains_key("x-death"));

    let replayed = replay_headers(h);
    assert_eq!(replayed.inner().keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["traceparent", CORRELATION_ID]);
}

#[test]
fn long_errors_are_cut() {
    let headers = dead_letter_headers(None, 1, DeadLetterReason::DecodeError, &"é".repeat(5000), "q", Utc::now());
    assert_eq!(text(Some(&headers), ERROR).unwrap().chars().count(), MAX_ERROR_LEN);
}

#[test]
fn forwarded_properties_are_persistent_and_lose_expiration() {
    let original = BasicProperties::default()
        .with_message_id(ShortString::from("m"))
        .with_type(ShortString::from("t"))
        .with_expiration(ShortString::from("100"))
        .with_user_id(ShortString::from("someone"))
        .with_timestamp(42);
    let forwarded = forward_properties(&original, retry_headers(None, 1));
    assert_eq!(forwarded.message_id().as_ref().map(ShortString::as_str), Some("m"));
    assert_eq!(forwarded.kind().as_ref().map(ShortString::as_str), Some("t"));
    assert_eq!(*forwarded.timestamp(), Some(42));
    assert_eq!(*forwarded.delivery_mode(), Some(2));
    assert!(forwarded.expiration().is_none() && forwarded.user_id().is_none());
    assert_eq!(attempts_made(forwarded.headers().as_ref()), 1);
}

#[test]
fn tiers_follow_the_configuration() {
    let delays = [Duration::from_secs(1), Duration::from_secs(5)];
    assert_eq!(next_step(1, 4, &delays), Next::Retry { tier: 0, delay: delays[0] });
    assert_eq!(next_step(2, 4, &delays), Next::Retry { tier: 1, delay: delays[1] });
    assert_eq!(next_step(3, 4, &delays), Next::Retry { tier: 1, delay: delays[1] });
    assert_eq!(next_step(4, 4, &delays), Next::DeadLetter);
    assert_eq!(next_step(1, 1, &delays), Next::DeadLetter);
    assert_eq!(next_step(1, 3, &[]), Next::DeadLetter);
}

proptest! {
    #[test]
    fn retries_never_outlive_max_attempts_and_never_shorten(
        delays in proptest::collection::vec(1u64..100_000, 1..6),
        max in 1u32..20,
        made in 1u32..40,
    ) {
        let delays: Vec<Duration> = delays.into_iter().map(Duration::from_millis).collect();
        match next_step(made, max, &delays) {
            Next::DeadLetter => prop_assert!(made >= max),
            Next::Retry { tier, delay } => {
                prop_assert!(made < max);
                prop_assert!(tier < delays.len());
                prop_assert_eq!(delay, delays[tier]);
                if let Next::Retry { tier: later, .. } = next_step(made + 1, max.max(made + 2), &delays) {
                    prop_assert!(later >= tier);
                }
            }
        }
    }

    #[test]
    fn attempts_survive_a_retry_round_trip(made in 0u32..1000, extra in "[a-z]{1,8}") {
        let original = table(&[(extra.as_str(), long("v"))]);
        let headers = retry_headers(Some(&original), made);
        prop_assert_eq!(attempts_made(Some(&headers)), made);
        let value = text(Some(&headers), &extra);
        prop_assert_eq!(value.as_deref(), Some("v"));
    }
}
