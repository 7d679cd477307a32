//! Bad input is refused with the right gRPC code, a message naming the field, and no change
//! to what is stored.

mod support;

use std::collections::HashMap;

use switchyard_client::{Batch, JobSpec};
use switchyard_proto::{
    Duration, Timestamp,
    v1::{
        CancelRequest, GetRequest, ListRequest, RunRequest, SubmitBatchRequest, SubmitRequest,
        WaitRequest, WatchGroupRequest, cancel_request::Target,
    },
};
use tonic::{Code, Request, Status};

use support::{
    DAY_MS, MIB, all_jobs, assert_names, assert_nothing_stored, ids, jobs, new_job, now_ms, start,
    stats, timestamp_ms,
};

/// Starts a coordinator, submits `request`, and checks it is refused as INVALID_ARGUMENT
/// naming `field`, with nothing stored.
async fn assert_submit_refused(request: SubmitRequest, field: &str) -> Status {
    let (_coordinator, client) = start().await;
    let status = jobs(&client)
        .submit(request)
        .await
        .expect_err("the submit is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_nothing_stored(&client).await;
    assert_names(&status, field);
    status
}

/// Submits `request` to a fresh coordinator and expects it stored.
async fn assert_submit_accepted(request: SubmitRequest) {
    let (_coordinator, client) = start().await;
    let id = jobs(&client)
        .submit(request)
        .await
        .expect("the submit is accepted")
        .into_inner()
        .job_id;
    assert_eq!(ids(&all_jobs(&client).await), [id]);
}

fn valid() -> SubmitRequest {
    new_job("default", "echo")
}

fn duration(seconds: i64, nanos: i32) -> Option<Duration> {
    Some(Duration { seconds, nanos })
}

fn in_ms(ms: i64) -> Option<Timestamp> {
    Some(timestamp_ms(now_ms() + ms))
}

// --- queue and kind ---------------------------------------------------------------------------

#[tokio::test]
async fn empty_queue() {
    let status = assert_submit_refused(new_job("", "echo"), "queue").await;
    assert!(status.message().contains("required"), "{status:?}");
}

#[tokio::test]
async fn queue_of_129_characters() {
    assert_submit_refused(new_job(&"q".repeat(129), "echo"), "queue").await;
}

#[tokio::test]
async fn queue_of_128_characters_is_accepted() {
    assert_submit_accepted(new_job(&"q".repeat(128), "echo")).await;
}

#[tokio::test]
async fn queue_with_a_space() {
    assert_submit_refused(new_job("my queue", "echo"), "queue").await;
}

#[tokio::test]
async fn queue_with_unicode() {
    assert_submit_refused(new_job("queüe", "echo"), "queue").await;
}

#[tokio::test]
async fn empty_kind() {
    assert_submit_refused(new_job("default", ""), "kind").await;
}

#[tokio::test]
async fn kind_with_a_slash() {
    assert_submit_refused(new_job("default", "a/b"), "kind").await;
}

// --- payload ----------------------------------------------------------------------------------

#[tokio::test]
async fn payload_of_one_byte_over_1_mib() {
    let request = SubmitRequest {
        payload: vec![7; MIB + 1],
        ..valid()
    };
    let status = assert_submit_refused(request, "payload").await;
    assert!(status.message().contains("1048577"), "{status:?}");
}

#[tokio::test]
async fn payload_of_exactly_1_mib_is_accepted_and_kept() {
    let (_coordinator, client) = start().await;
    let payload: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let id = jobs(&client)
        .submit(SubmitRequest {
            payload: payload.clone(),
            ..valid()
        })
        .await
        .expect("1 MiB is within the limit")
        .into_inner()
        .job_id;
    let job = client.get(&id).await.expect("get");
    assert_eq!(job.payload.len(), MIB);
    assert!(job.payload == payload, "the payload came back changed");
}

// --- numbers ----------------------------------------------------------------------------------

#[tokio::test]
async fn max_attempts_zero() {
    let request = SubmitRequest {
        max_attempts: Some(0),
        ..valid()
    };
    assert_submit_refused(request, "max_attempts").await;
}

#[tokio::test]
async fn max_attempts_101() {
    let request = SubmitRequest {
        max_attempts: Some(101),
        ..valid()
    };
    assert_submit_refused(request, "max_attempts").await;
}

#[tokio::test]
async fn priority_1001() {
    let request = SubmitRequest {
        priority: 1001,
        ..valid()
    };
    assert_submit_refused(request, "priority").await;
}

#[tokio::test]
async fn priority_minus_1001() {
    let request = SubmitRequest {
        priority: -1001,
        ..valid()
    };
    assert_submit_refused(request, "priority").await;
}

#[tokio::test]
async fn weight_zero() {
    let request = SubmitRequest {
        weight: Some(0),
        ..valid()
    };
    assert_submit_refused(request, "weight").await;
}

#[tokio::test]
async fn weight_1001() {
    let request = SubmitRequest {
        weight: Some(1001),
        ..valid()
    };
    assert_submit_refused(request, "weight").await;
}

/// Every limit, at its edge, in one job: the rules are inclusive where the contract says so.
#[tokio::test]
async fn values_at_the_limits_are_accepted() {
    let (_coordinator, client) = start().await;
    let labels: HashMap<String, String> = (0..64)
        .map(|i| (format!("{i:0>128}"), "v".repeat(1024)))
        .collect();
    let edges = [
        SubmitRequest {
            queue: "Q".repeat(128),
            kind: "k".repeat(128),
            priority: 1000,
            max_attempts: Some(100),
            weight: Some(1000),
            timeout: duration(7 * 24 * 3600, 0),
            deadline: in_ms(365 * DAY_MS),
            run_at: in_ms(365 * DAY_MS),
            idempotency_key: "i".repeat(256),
            concurrency_key: "c".repeat(128),
            labels,
            ..valid()
        },
        SubmitRequest {
            priority: -1000,
            max_attempts: Some(1),
            weight: Some(1),
            timeout: duration(0, 1_000_000),
            // A run_at in the past means "now".
            run_at: in_ms(-DAY_MS),
            ..valid()
        },
    ];
    let mut stored = Vec::new();
    for request in edges {
        let id = jobs(&client)
            .submit(request)
            .await
            .expect("values at the limits are accepted")
            .into_inner()
            .job_id;
        stored.push(id);
    }
    assert_eq!(ids(&all_jobs(&client).await), stored);
}

// --- durations and times ----------------------------------------------------------------------

#[tokio::test]
async fn negative_timeout() {
    let request = SubmitRequest {
        timeout: duration(-1, 0),
        ..valid()
    };
    assert_submit_refused(request, "timeout").await;
}

#[tokio::test]
async fn zero_timeout() {
    let request = SubmitRequest {
        timeout: duration(0, 0),
        ..valid()
    };
    assert_submit_refused(request, "timeout").await;
}

#[tokio::test]
async fn timeout_over_7_days() {
    let request = SubmitRequest {
        timeout: duration(7 * 24 * 3600, 1_000_000),
        ..valid()
    };
    assert_submit_refused(request, "timeout").await;
}

#[tokio::test]
async fn timeout_with_nanos_out_of_range() {
    let request = SubmitRequest {
        timeout: duration(1, 1_000_000_000),
        ..valid()
    };
    assert_submit_refused(request, "timeout").await;
}

#[tokio::test]
async fn timeout_with_negative_nanos() {
    let request = SubmitRequest {
        timeout: duration(1, -1),
        ..valid()
    };
    assert_submit_refused(request, "timeout").await;
}

#[tokio::test]
async fn deadline_in_the_past() {
    let request = SubmitRequest {
        deadline: in_ms(-1000),
        ..valid()
    };
    assert_submit_refused(request, "deadline").await;
}

#[tokio::test]
async fn deadline_beyond_366_days() {
    let request = SubmitRequest {
        deadline: in_ms(367 * DAY_MS),
        ..valid()
    };
    assert_submit_refused(request, "deadline").await;
}

#[tokio::test]
async fn deadline_with_nanos_out_of_range() {
    let request = SubmitRequest {
        deadline: Some(Timestamp {
            seconds: now_ms() / 1000 + 3600,
            nanos: 1_000_000_000,
        }),
        ..valid()
    };
    assert_submit_refused(request, "deadline").await;
}

#[tokio::test]
async fn run_at_beyond_366_days() {
    let request = SubmitRequest {
        run_at: in_ms(367 * DAY_MS),
        ..valid()
    };
    assert_submit_refused(request, "run_at").await;
}

#[tokio::test]
async fn run_at_before_year_1() {
    let request = SubmitRequest {
        run_at: Some(Timestamp {
            seconds: -62_135_596_801,
            nanos: 0,
        }),
        ..valid()
    };
    assert_submit_refused(request, "run_at").await;
}

// --- keys and labels --------------------------------------------------------------------------

#[tokio::test]
async fn bad_label_key() {
    let request = SubmitRequest {
        labels: HashMap::from([("bad key".to_owned(), "v".to_owned())]),
        ..valid()
    };
    assert_submit_refused(request, r#"labels["bad key"]"#).await;
}

#[tokio::test]
async fn label_value_over_1024_bytes() {
    let request = SubmitRequest {
        labels: HashMap::from([("k".to_owned(), "v".repeat(1025))]),
        ..valid()
    };
    assert_submit_refused(request, r#"labels["k"]"#).await;
}

#[tokio::test]
async fn sixty_five_labels() {
    let request = SubmitRequest {
        labels: (0..65).map(|i| (format!("k{i}"), "v".to_owned())).collect(),
        ..valid()
    };
    assert_submit_refused(request, "labels").await;
}

#[tokio::test]
async fn idempotency_key_with_a_control_character() {
    let request = SubmitRequest {
        idempotency_key: "a\u{7}b".into(),
        ..valid()
    };
    assert_submit_refused(request, "idempotency_key").await;
}

#[tokio::test]
async fn idempotency_key_over_256_bytes() {
    let request = SubmitRequest {
        idempotency_key: "i".repeat(257),
        ..valid()
    };
    assert_submit_refused(request, "idempotency_key").await;
}

#[tokio::test]
async fn bad_concurrency_key() {
    let request = SubmitRequest {
        concurrency_key: "customer 42".into(),
        ..valid()
    };
    assert_submit_refused(request, "concurrency_key").await;
}

#[tokio::test]
async fn group_id_on_a_plain_submit() {
    let request = SubmitRequest {
        group_id: "g".into(),
        ..valid()
    };
    assert_submit_refused(request, "group_id").await;
}

#[tokio::test]
async fn ref_on_a_plain_submit() {
    let request = SubmitRequest {
        r#ref: "r".into(),
        ..valid()
    };
    assert_submit_refused(request, "ref").await;
}

#[tokio::test]
async fn bad_tenant_metadata() {
    let (_coordinator, client) = start().await;
    for tenant in ["acme corp", "acme/corp", "t".repeat(129).as_str()] {
        let mut request = Request::new(valid());
        request
            .metadata_mut()
            .insert("x-tenant-id", tenant.parse().expect("ascii"));
        let status = jobs(&client)
            .submit(request)
            .await
            .expect_err("the tenant is refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{tenant:?}: {status:?}"
        );
        assert_names(&status, "x-tenant-id");

        let mut request = Request::new(Batch::new().job(JobSpec::new("q", "k")).into_request());
        request
            .metadata_mut()
            .insert("x-tenant-id", tenant.parse().expect("ascii"));
        let status = jobs(&client)
            .submit_batch(request)
            .await
            .expect_err("the tenant is refused");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{tenant:?}: {status:?}"
        );
        assert_names(&status, "x-tenant-id");
    }
    assert_nothing_stored(&client).await;
}

// --- dependencies -----------------------------------------------------------------------------

#[tokio::test]
async fn depends_on_an_unknown_job() {
    let (_coordinator, client) = start().await;
    let request = SubmitRequest {
        depends_on: vec!["0190d3c0-0000-7000-8000-000000000000".into()],
        ..valid()
    };
    let status = jobs(&client)
        .submit(request)
        .await
        .expect_err("the dependency does not exist");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_nothing_stored(&client).await;
    assert!(status.message().contains("depends_on[0]"), "{status:?}");
}

/// A plain Submit has no `jobs[..]`: its fields are named as the other Submit errors name
/// them (`depends_on[0]`, like `queue` or `payload`).
#[tokio::test]
async fn an_unknown_dependency_of_a_plain_submit_is_named_like_its_other_fields() {
    let (_coordinator, client) = start().await;
    let request = SubmitRequest {
        depends_on: vec!["0190d3c0-0000-7000-8000-000000000000".into()],
        ..valid()
    };
    let status = jobs(&client)
        .submit(request)
        .await
        .expect_err("the dependency does not exist");
    assert_names(&status, "depends_on[0]");
}

#[tokio::test]
async fn depends_on_itself_is_refused() {
    // A batch job naming its own ref.
    let (_coordinator, client) = start().await;
    let batch = Batch::new()
        .job(JobSpec::new("q", "k"))
        .job(JobSpec::new("q", "k").reference("me").depends_on("me"));
    let status = jobs(&client)
        .submit_batch(batch.into_request())
        .await
        .expect_err("a job cannot wait for itself");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_nothing_stored(&client).await;
    assert_names(&status, "jobs[1].depends_on[0]");
}

// --- batches ----------------------------------------------------------------------------------

async fn assert_batch_refused(request: SubmitBatchRequest, field: &str) -> Status {
    let (_coordinator, client) = start().await;
    let status = jobs(&client)
        .submit_batch(request)
        .await
        .expect_err("the batch is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_nothing_stored(&client).await;
    assert_names(&status, field);
    status
}

fn good(i: usize) -> JobSpec {
    JobSpec::new("batch", "echo").payload(format!("good {i}"))
}

#[tokio::test]
async fn a_batch_with_one_bad_job_is_refused_whole() {
    let batch = Batch::new()
        .job(good(0))
        .job(JobSpec::new("batch", ""))
        .job(good(2));
    assert_batch_refused(batch.into_request(), "jobs[1].kind").await;
}

#[tokio::test]
async fn a_batch_with_an_oversized_payload_late_in_it_is_refused_whole() {
    let batch = Batch::new()
        .jobs((0..5).map(good))
        .job(JobSpec::new("batch", "echo").payload(vec![0; MIB + 1]));
    assert_batch_refused(batch.into_request(), "jobs[5].payload").await;
}

#[tokio::test]
async fn a_batch_with_an_unknown_dependency_is_refused_whole() {
    let batch = Batch::new()
        .job(good(0))
        .job(good(1).depends_on("0190d3c0-0000-7000-8000-000000000000"))
        .group("never-made");
    assert_batch_refused(batch.into_request(), "jobs[1].depends_on[0]").await;
}

#[tokio::test]
async fn an_empty_batch() {
    assert_batch_refused(Batch::new().into_request(), "jobs").await;
}

#[tokio::test]
async fn a_batch_of_10001_jobs() {
    let batch = Batch::new().jobs((0..10_001).map(|_| JobSpec::new("q", "k")));
    assert_batch_refused(batch.into_request(), "jobs").await;
}

#[tokio::test]
async fn a_batch_with_a_dependency_cycle() {
    let batch = Batch::new()
        .job(good(0).reference("a").depends_on("c"))
        .job(good(1).reference("b").depends_on("a"))
        .job(good(2).reference("c").depends_on("b"));
    let (_coordinator, client) = start().await;
    let status = jobs(&client)
        .submit_batch(batch.into_request())
        .await
        .expect_err("a cycle never runs");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_nothing_stored(&client).await;
    let field = support::named_field(&status);
    assert!(
        field.starts_with("jobs[") && field.ends_with("].depends_on"),
        "{status:?}"
    );
    assert!(status.message().contains("cycle"), "{status:?}");
}

#[tokio::test]
async fn a_batch_with_a_duplicate_ref() {
    let batch = Batch::new()
        .job(good(0).reference("same"))
        .job(good(1).reference("same"));
    assert_batch_refused(batch.into_request(), "jobs[1].ref").await;
}

#[tokio::test]
async fn a_batch_with_a_bad_group_id() {
    let batch = Batch::new().job(good(0)).group("bad group");
    assert_batch_refused(batch.into_request(), "group_id").await;
}

#[tokio::test]
async fn cancel_on_failure_without_a_group() {
    let batch = Batch::new().job(good(0)).cancel_on_failure(true);
    assert_batch_refused(batch.into_request(), "cancel_on_failure").await;
}

#[tokio::test]
async fn a_batch_job_naming_another_group() {
    let mut request = Batch::new().job(good(0)).group("mine").into_request();
    request.jobs[0].group_id = "theirs".into();
    assert_batch_refused(request, "jobs[0].group_id").await;
}

#[tokio::test]
async fn a_batch_reusing_a_group_id_is_already_exists() {
    let (_coordinator, client) = start().await;
    let first = client
        .submit_batch(Batch::new().group("nightly").jobs((0..3).map(good)))
        .await
        .expect("the first batch makes the group");
    let before = all_jobs(&client).await;
    let rows_before = stats(&client)
        .await
        .store
        .expect("store stats")
        .rows_written;

    let status = jobs(&client)
        .submit_batch(
            Batch::new()
                .group("nightly")
                .jobs((3..5).map(good))
                .into_request(),
        )
        .await
        .expect_err("the group exists");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains("nightly"), "{status:?}");

    let after = all_jobs(&client).await;
    assert_eq!(ids(&after), ids(&before));
    assert_eq!(
        ids(&after),
        first
            .jobs
            .iter()
            .map(|j| j.job_id.clone())
            .collect::<Vec<_>>()
    );
    let rows_after = stats(&client)
        .await
        .store
        .expect("store stats")
        .rows_written;
    assert_eq!(rows_after, rows_before);
}

// --- get, list, cancel ------------------------------------------------------------------------

#[tokio::test]
async fn get_of_an_unknown_id_is_not_found() {
    let (_coordinator, client) = start().await;
    let id = "0190d3c0-0000-7000-8000-000000000000";
    let status = jobs(&client)
        .get(GetRequest { job_id: id.into() })
        .await
        .expect_err("no such job");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains(id), "{status:?}");
}

#[tokio::test]
async fn get_with_an_empty_id() {
    let (_coordinator, client) = start().await;
    let status = jobs(&client)
        .get(GetRequest::default())
        .await
        .expect_err("an id is required");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_names(&status, "job_id");
}

#[tokio::test]
async fn list_with_page_size_1001() {
    let (_coordinator, client) = start().await;
    let status = jobs(&client)
        .list(ListRequest {
            page_size: 1001,
            ..Default::default()
        })
        .await
        .expect_err("the page is too big");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_names(&status, "page_size");
}

#[tokio::test]
async fn list_with_a_forged_page_token() {
    let (_coordinator, client) = start().await;
    client.submit(JobSpec::new("q", "k")).await.expect("submit");
    for token in ["garbage", "s-1", "s0", "42", "s1; DROP TABLE jobs"] {
        let status = jobs(&client)
            .list(ListRequest {
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .expect_err("the server did not issue this token");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{token:?}: {status:?}"
        );
        assert_names(&status, "page_token");
    }
    assert_eq!(all_jobs(&client).await.len(), 1);
}

#[tokio::test]
async fn list_with_bad_filters() {
    let (_coordinator, client) = start().await;
    let cases = [
        (
            ListRequest {
                state: 99,
                ..Default::default()
            },
            "state",
        ),
        (
            ListRequest {
                queue: "bad queue".into(),
                ..Default::default()
            },
            "queue",
        ),
        (
            ListRequest {
                kind: "bad/kind".into(),
                ..Default::default()
            },
            "kind",
        ),
        (
            ListRequest {
                group_id: "bad group".into(),
                ..Default::default()
            },
            "group_id",
        ),
    ];
    for (request, field) in cases {
        let status = jobs(&client)
            .list(request)
            .await
            .expect_err("the filter is refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_names(&status, field);
    }
}

#[tokio::test]
async fn cancel_without_a_target() {
    let (_coordinator, client) = start().await;
    for target in [
        None,
        Some(Target::JobId(String::new())),
        Some(Target::GroupId(String::new())),
    ] {
        let status = jobs(&client)
            .cancel(CancelRequest {
                target: target.clone(),
                reason: String::new(),
            })
            .await
            .expect_err("nothing to cancel");
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{target:?}: {status:?}"
        );
        assert_names(&status, "target");
    }
}

#[tokio::test]
async fn cancel_with_an_overlong_reason_changes_nothing() {
    let (_coordinator, client) = start().await;
    let id = client
        .submit(JobSpec::new("q", "k"))
        .await
        .expect("submit")
        .job_id;
    let status = jobs(&client)
        .cancel(CancelRequest {
            target: Some(Target::JobId(id.clone())),
            reason: "r".repeat(1025),
        })
        .await
        .expect_err("the reason is too long");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_names(&status, "reason");
    let job = client.get(&id).await.expect("get");
    assert_eq!(job.state, switchyard_proto::v1::JobState::Queued as i32);
}

// --- Run, Wait and WatchGroup refusals -----------------------------------------------------

/// A malformed `grpc-timeout` is refused rather than ignored, and Run stores nothing then.
#[tokio::test]
async fn a_malformed_grpc_timeout_is_refused() {
    let (_coordinator, client) = start().await;
    for bad in ["5s", "S", "123456789S", "-1m"] {
        let mut request = tonic::Request::new(RunRequest {
            job: Some(valid()),
            detach: false,
        });
        request
            .metadata_mut()
            .insert("grpc-timeout", bad.parse().expect("ascii"));
        let status = jobs(&client).run(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert!(status.message().contains("grpc-timeout"), "{status:?}");
    }
    assert_nothing_stored(&client).await;
}

#[tokio::test]
async fn waiting_on_an_unknown_job_or_watching_an_unknown_group_is_not_found() {
    let (_coordinator, client) = start().await;
    let status = jobs(&client)
        .wait(WaitRequest {
            job_id: "0190d3c0-0000-7000-8000-000000000000".into(),
        })
        .await
        .expect_err("no such job");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    let status = jobs(&client)
        .run(RunRequest {
            job: None,
            detach: false,
        })
        .await
        .expect_err("Run needs a job");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    let status = jobs(&client)
        .watch_group(WatchGroupRequest {
            group_id: "g".into(),
            cursor: String::new(),
        })
        .await
        .expect_err("no such group");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_nothing_stored(&client).await;
}

// --- transport limits -------------------------------------------------------------------------

/// 17 jobs of 1 MiB are each valid, but the batch is over the 16 MiB message limit.
#[tokio::test]
async fn a_message_over_16_mib_is_refused() {
    let (_coordinator, client) = start().await;
    let batch =
        Batch::new().jobs((0..17).map(|i| JobSpec::new("big", "echo").payload(vec![i; MIB])));
    let status = jobs(&client)
        .submit_batch(batch.into_request())
        .await
        .expect_err("the message is over the limit");
    // tonic answers OUT_OF_RANGE for a message over `max_decoding_message_size`.
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_nothing_stored(&client).await;

    // The coordinator lives on, and a batch under the limit goes through.
    let batch =
        Batch::new().jobs((0..8).map(|i| JobSpec::new("big", "echo").payload(vec![i; MIB])));
    let response = client
        .submit_batch(batch)
        .await
        .expect("8 MiB is under the limit");
    assert_eq!(response.jobs.len(), 8);
    assert_eq!(all_jobs(&client).await.len(), 8);
}
