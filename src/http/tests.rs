use super::*;
use http::Method;
use routes::Miss;

/// Every HTTP route of every row of the RPC table reaches a route whose
/// token check and metrics label are that row's method; and every route
/// that calls a method is one of its row's routes (no route beside the
/// table).
#[test]
fn routes_follow_the_rpc_table() {
    let mut reached = std::collections::HashSet::new();
    for rpc in crate::transport::methods::RPCS {
        for http in rpc.http {
            let (verb, path) = http.split_once(' ').expect("METHOD /path");
            let path = path.replace("{id}", "abc").replace("{name}", "n1");
            let method = Method::from_bytes(verb.as_bytes()).expect("HTTP method");
            let r = route(&method, &path).unwrap_or_else(|e| panic!("{http}: {e:?}"));
            assert_eq!(r.grpc_method(), Some(rpc.path), "{http}");
            reached.insert(std::mem::discriminant(&r));
        }
    }
    assert_eq!(reached.len(), 22, "routes that call a method");
    // The routes that call no method: the dashboard's files and the
    // token-only information routes.
    for (verb, path) in [
        (Method::GET, "/ui/"),
        (Method::GET, "/"),
        (Method::GET, "/favicon.ico"),
        (Method::GET, "/v1/whoami"),
        (Method::GET, "/v1/stats/throughput"),
    ] {
        let r = route(&verb, path).unwrap_or_else(|e| panic!("{path}: {e:?}"));
        assert_eq!(r.grpc_method(), None, "{path}");
        assert!(!reached.contains(&std::mem::discriminant(&r)), "{path}");
    }
    assert_eq!(
        route(&Method::POST, "/v1/kinds/echo/jobs"),
        Ok(Route::SubmitRaw("echo".into()))
    );
    assert_eq!(
        route(&Method::GET, "/v1/kinds/echo/jobs"),
        Err(Miss::Method("POST"))
    );
}

#[test]
fn routes_split_custom_verbs_and_methods() {
    let get = Method::GET;
    let post = Method::POST;
    assert_eq!(route(&post, "/v1/jobs"), Ok(Route::Submit));
    assert_eq!(route(&get, "/v1/jobs"), Ok(Route::List));
    assert_eq!(route(&get, "/v1/jobs/abc"), Ok(Route::Get("abc".into())));
    assert_eq!(
        route(&post, "/v1/jobs/abc:cancel"),
        Ok(Route::Cancel("abc".into()))
    );
    assert_eq!(
        route(&get, "/v1/jobs/abc/events"),
        Ok(Route::Events("abc".into()))
    );
    assert_eq!(
        route(&post, "/v1/kinds/echo:pause"),
        Ok(Route::PauseKind("echo".into()))
    );
    assert_eq!(
        route(&post, "/v1/schedules/s1:trigger"),
        Ok(Route::TriggerSchedule("s1".into()))
    );
    assert_eq!(route(&post, "/v1/schedules"), Ok(Route::CreateSchedule));
    assert_eq!(
        route(&Method::PUT, "/v1/schedules/s1"),
        Ok(Route::UpdateSchedule("s1".into()))
    );
    assert_eq!(
        route(&Method::DELETE, "/v1/schedules/s1"),
        Ok(Route::DeleteSchedule("s1".into()))
    );
    assert_eq!(
        route(&get, "/v1/schedules/s1"),
        Err(Miss::Method("PUT, DELETE"))
    );
    assert_eq!(route(&post, "/v1/jobs:batch"), Ok(Route::SubmitBatch));
    assert_eq!(route(&get, "/v1/events"), Ok(Route::AllEvents));
    assert_eq!(
        route(&get, "/v1/jobs/abc:cancel"),
        Err(Miss::Method("POST"))
    );
    assert_eq!(
        route(&Method::DELETE, "/v1/jobs"),
        Err(Miss::Method("GET, POST"))
    );
    assert_eq!(route(&post, "/v1/jobs/abc:explode"), Err(Miss::NotFound));
    assert_eq!(route(&get, "/v1/jobs/"), Err(Miss::NotFound));
    assert_eq!(route(&post, "/v1/kinds/:pause"), Err(Miss::NotFound));
    assert_eq!(route(&get, "/v2/jobs"), Err(Miss::NotFound));
    assert_eq!(route(&get, "/"), Ok(Route::UiRedirect));
    assert_eq!(route(&get, "/nope"), Err(Miss::NotFound));
}

#[test]
fn http_status_follows_google_mapping() {
    assert_eq!(http_status(Code::InvalidArgument), 400);
    assert_eq!(http_status(Code::FailedPrecondition), 400);
    assert_eq!(http_status(Code::NotFound), 404);
    assert_eq!(http_status(Code::AlreadyExists), 409);
    assert_eq!(http_status(Code::ResourceExhausted), 429);
    assert_eq!(http_status(Code::Unauthenticated), 401);
    assert_eq!(http_status(Code::PermissionDenied), 403);
    assert_eq!(http_status(Code::Unavailable), 503);
    assert_eq!(http_status(Code::DeadlineExceeded), 504);
    assert_eq!(http_status(Code::Unimplemented), 501);
}
