//! Token authentication on JobService; health and reflection stay open.

use jobd::proto::{self, job_service_client::JobServiceClient};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

use crate::helpers::*;

const ADMIN: &str = "admin-token-0123456789";
const SUBMITTER: &str = "submit-token-0123456789";

type AddToken =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = JobServiceClient<InterceptedService<Channel, AddToken>>;

async fn client_with(url: &str, token: Option<&'static str>) -> Client {
    let ch = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let f: AddToken = Box::new(move |mut r: tonic::Request<()>| {
        if let Some(t) = token {
            let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
            r.metadata_mut().insert("authorization", v);
        }
        Ok(r)
    });
    JobServiceClient::with_interceptor(ch, f)
}

#[tokio::test]
async fn tokens_and_roles() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    std::fs::write(&file, format!("# role token\nsubmit {SUBMITTER}\n")).unwrap();
    let d = start(&format!(
        "[auth]\ntokens = [{{ token = \"{ADMIN}\", role = \"admin\" }}]\ntokens_file = \"{}\"\n",
        file.display()
    ))
    .await;
    let url = d.url();

    for (token, code) in [
        (None, Code::Unauthenticated),
        (Some("wrong-token-0123456789"), Code::Unauthenticated),
    ] {
        let mut c = client_with(&url, token).await;
        let e = c.submit(req("echo", "x")).await.unwrap_err();
        assert_eq!(e.code(), code, "{token:?}");
    }
    let mut s = client_with(&url, Some(SUBMITTER)).await;
    let job = s
        .submit(req("echo", "x"))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    s.get_status(proto::GetStatusRequest { id: job.id.clone() })
        .await
        .unwrap();
    s.list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap();
    let e = s
        .cancel(proto::CancelRequest { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);

    let mut a = client_with(&url, Some(ADMIN)).await;
    let later = {
        let mut r = req("echo", "later");
        r.run_at = Some(ts_in(std::time::Duration::from_secs(3600)));
        a.submit(r).await.unwrap().into_inner().job.unwrap()
    };
    a.cancel(proto::CancelRequest { id: later.id })
        .await
        .unwrap();

    // Health stays open for probes.
    let ch = Channel::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch);
    h.check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    d.stop().await;
}

#[test]
fn short_tokens_and_bad_token_files_are_config_errors() {
    for text in [
        "[auth]\ntokens = [{ token = \"short\", role = \"admin\" }]\n",
        "[auth]\ntokens = [{ token = \"0123456789abcdef\", role = \"root\" }]\n",
        "[auth]\ntokens_file = \"/no/such/file\"\n",
    ] {
        let c = jobd::Config::from_toml(text);
        let bad = match c {
            Err(_) => true,
            Ok(c) => jobd::prepare(c.with_default_kinds()).is_err(),
        };
        assert!(bad, "{text}");
    }
    // The token never prints.
    let c = jobd::Config::from_toml(
        "[auth]\ntokens = [{ token = \"0123456789abcdef-secret\", role = \"admin\" }]\n",
    )
    .unwrap();
    assert!(!format!("{c:?}").contains("secret"));
}

#[tokio::test]
async fn ten_thousand_malformed_requests_then_a_good_one() {
    let d = start("[queue]\nmax_payload_bytes = 1024\n").await;
    let mut c = d.client().await;
    let bad = [
        proto::SubmitRequest {
            kind: "".into(),
            ..Default::default()
        },
        proto::SubmitRequest {
            kind: "NOPE!".into(),
            ..Default::default()
        },
        proto::SubmitRequest {
            kind: "echo".into(),
            timeout: Some(prost_types::Duration {
                seconds: -5,
                nanos: 7,
            }),
            ..Default::default()
        },
        proto::SubmitRequest {
            kind: "echo".into(),
            run_at: Some(prost_types::Timestamp {
                seconds: i64::MIN,
                nanos: -1,
            }),
            ..Default::default()
        },
        proto::SubmitRequest {
            kind: "echo".into(),
            payload: vec![0; 1025],
            ..Default::default()
        },
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..8 {
        let mut c = c.clone();
        let bad = bad.clone();
        tasks.spawn(async move {
            for i in 0..1250 {
                let r = bad[(w + i) % bad.len()].clone();
                let e = c.submit(r).await.unwrap_err();
                assert_eq!(e.code(), Code::InvalidArgument, "{e}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let job = submit(&mut c, req("echo", "still fine")).await;
    assert_eq!(wait_terminal(&mut c, &job.id).await.result, b"still fine");
    d.stop().await;
}

#[tokio::test]
async fn submit_rate_limit_per_token() {
    let d = start(&format!(
        "[auth]\nsubmit_rate = 5\ntokens = [{{ token = \"{ADMIN}\", role = \"admin\" }}, {{ token = \"{SUBMITTER}\", role = \"submit\" }}]\n"
    ))
    .await;
    let mut a = client_with(&d.url(), Some(ADMIN)).await;
    let mut ok = 0;
    let mut limited = None;
    for _ in 0..20 {
        match a.submit(req("echo", "x")).await {
            Ok(_) => ok += 1,
            Err(e) => {
                limited = Some(e);
                break;
            }
        }
    }
    let e = limited.expect("the 5/s bucket runs out within 20 quick calls");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(tonic_types::StatusExt::get_details_retry_info(&e).is_some());
    assert!((5..=7).contains(&ok), "{ok} calls passed a bucket of 5");
    // Reads are not limited, and the other token has its own bucket.
    a.list_jobs(proto::ListJobsRequest::default())
        .await
        .unwrap();
    let mut s = client_with(&d.url(), Some(SUBMITTER)).await;
    s.submit(req("echo", "x")).await.unwrap();
    d.stop().await;
}

/// `submit_rate` counts jobs: a SubmitBatch of 1,000 pays for 1,000 (it goes
/// through on a full bucket, then the bucket is in debt), and the scheme
/// name `bearer` is matched case-insensitively.
#[tokio::test]
async fn submit_rate_counts_jobs_and_bearer_is_case_insensitive() {
    let d = start(&format!(
        "[auth]\nsubmit_rate = 5\ntokens = [{{ token = \"{ADMIN}\", role = \"admin\" }}]\n"
    ))
    .await;
    let ch = Channel::from_shared(d.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let f: AddToken = Box::new(move |mut r: tonic::Request<()>| {
        let v: MetadataValue<_> = format!("bEARER {ADMIN}").parse().unwrap();
        r.metadata_mut().insert("authorization", v);
        Ok(r)
    });
    let mut a = JobServiceClient::with_interceptor(ch, f);
    let batch = proto::SubmitBatchRequest {
        requests: (0..1000).map(|_| req("echo", "x")).collect(),
    };
    let r = a.submit_batch(batch.clone()).await.unwrap().into_inner();
    assert_eq!(r.results.len(), 1000);
    // The bucket now owes ~995 jobs (~199 s at 5/s): everything waits.
    let e = a.submit(req("echo", "x")).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let wait = tonic_types::StatusExt::get_details_retry_info(&e)
        .and_then(|r| r.retry_delay)
        .expect("retry info");
    assert!(wait.as_secs() >= 100, "{wait:?}");
    let e = a.submit_batch(batch).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    d.stop().await;
}
