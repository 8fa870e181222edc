use super::*;

/// Every row of the RPC table with an HTTP route is reached by that
/// route, and the route's token check is that row's method.
#[test]
fn routes_follow_the_rpc_table() {
    let mut reached = 0;
    for rpc in crate::transport::methods::RPCS {
        let Some(http) = rpc.http else { continue };
        let (verb, path) = http.split_once(' ').expect("METHOD /path");
        let path = path.replace("{id}", "abc").replace("{name}", "n1");
        let method = Method::from_bytes(verb.as_bytes()).expect("HTTP method");
        let r = route(&method, &path).unwrap_or_else(|e| panic!("{http}: {e:?}"));
        assert_eq!(r.grpc_method(), rpc.path, "{http}");
        reached += 1;
    }
    assert_eq!(reached, 17);
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
    assert_eq!(route(&get, "/"), Err(Miss::NotFound));
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
