use super::*;

const SEED_SAMPLE: &str = r#"# required
group: guest
name: name
image: nginx
# optional
instances: 1
cpu: 0.1
memory: 64
network: bridge
privileged: false
command: /bin/bash
ports:
    - 8080
environment:
   APP_NAME: nginx
   APP_CONFIG: default
   CONSUL_HTTP_ADDR: 127.0.0.1:8500
   MY_ENV1: VAL1
zones:
    - slardar
    - slardar_test
services:
    - s1.upyun.com:8080
    - s2.upyun.com:8081
constraints:
    - hostname:UNIQUE
"#;

fn errors(text: &str) -> Vec<SpecError> {
    AppSpec::from_yaml(text, Some("berth.yaml")).expect_err("spec should be rejected").0
}

#[test]
fn seed_sample_validates_unchanged_with_a_warning_for_its_unpublished_port() {
    let spec = AppSpec::from_yaml(SEED_SAMPLE, Some("berth.yaml")).expect("the seed's sample is valid");
    let warnings = spec.warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("8081"), "{}", warnings[0]);
}

#[test]
fn seed_sample_fields_are_read() {
    let text = SEED_SAMPLE.replace("    - 8080\n", "    - 8080\n    - 8081\n");
    let spec = AppSpec::from_yaml(&text, None).expect("seed sample is valid");
    assert_eq!(spec.id(), "guest/name");
    assert_eq!(spec.image.as_deref(), Some("nginx"));
    assert_eq!(spec.cpu, Some(0.1));
    assert_eq!(spec.memory, Some(64));
    assert_eq!(spec.network, NetworkMode::Bridge);
    assert_eq!(spec.command, Some(Command::Shell("/bin/bash".into())));
    assert_eq!(spec.ports, vec![8080, 8081]);
    assert_eq!(spec.environment["CONSUL_HTTP_ADDR"], "127.0.0.1:8500");
    assert_eq!(spec.zones, vec!["slardar", "slardar_test"]);
    assert_eq!(spec.constraints, vec![Constraint { field: "hostname".into(), op: ConstraintOp::Unique, value: None }]);
    assert_eq!(AppSpec::service_port("s2.upyun.com:8081", &spec.ports), Some(8081));
}

#[test]
fn constraints_accept_a_single_string_and_marathon_lists() {
    let one = "group: g\nname: n\nimage: i\nconstraints: hostname:UNIQUE\n";
    assert_eq!(AppSpec::from_yaml(one, None).unwrap().constraints.len(), 1);
    let lists = "group: g\nname: n\nimage: i\nconstraints:\n  - [rack, CLUSTER, a]\n  - hostname:MAX_PER:2\n  - zone:GROUP_BY\n  - hostname:LIKE:web.*\n  - hostname:UNLIKE:db.*\n";
    let spec = AppSpec::from_yaml(lists, None).unwrap();
    let ops: Vec<_> = spec.constraints.iter().map(|c| c.op).collect();
    assert_eq!(
        ops,
        [ConstraintOp::Cluster, ConstraintOp::MaxPer, ConstraintOp::GroupBy, ConstraintOp::Like, ConstraintOp::Unlike]
    );
    assert_eq!(spec.constraints[0].value.as_deref(), Some("a"));
}

#[test]
fn cluster_may_pin_and_patterns_must_compile() {
    assert_eq!(Constraint::parse("rack:CLUSTER").unwrap().value, None, "pinned by the first placement");
    let err = Constraint::parse("rack:LIKE:r[0").unwrap_err();
    assert!(err.contains("`r[0` is not a regular expression"), "{err}");
    assert!(Constraint::parse("rack:UNLIKE:r(0|1)").is_ok());
}

#[test]
fn bad_constraint_operator_is_named_with_a_suggestion() {
    let errs = errors("group: g\nname: n\nimage: i\nconstraints:\n  - hostname:UNIQE\n");
    assert!(errs[0].to_string().contains("did you mean `UNIQUE`"), "{}", errs[0]);
    assert_eq!(errs[0].line, Some(5), "{}", errs[0]);
}

#[test]
fn misspelt_key_names_line_column_and_closest_key() {
    let errs = errors("group: g\nname: n\nimage: i\ninstanses: 3\n");
    let e = &errs[0];
    assert_eq!(e.field, "instanses");
    assert_eq!(e.suggestion.as_deref(), Some("instances"));
    assert_eq!((e.line, e.column), (Some(4), Some(1)));
    assert_eq!(e.to_string(), "berth.yaml:4:1: `instanses`: unknown key (did you mean `instances`?)");
}

#[test]
fn misspelt_nested_key_is_caught() {
    let errs = errors("group: g\nname: n\nimage: i\nports: [80]\nhealth:\n  http: /\n  intervall: 1s\n");
    assert_eq!(errs[0].suggestion.as_deref(), Some("interval"));
    assert_eq!(errs[0].line, Some(7));
}

#[test]
fn wrong_type_names_its_key_and_line() {
    let errs = errors("group: g\nname: n\nimage: i\ninstances: many\n");
    assert_eq!(errs[0].line, Some(4), "{}", errs[0]);
    assert_eq!(errs[0].field, "instances");
    assert_eq!(errs[0].to_string(), "berth.yaml:4:12: `instances`: expected a whole number, 0 or more");
    let errs = errors("group: g\nname: n\nimage: i\nports: [80]\nhealth:\n  http: /\n  interval: forever\n");
    assert_eq!(errs[0].field, "health.interval", "{}", errs[0]);
    let errs = errors("group: g\nname: n\nimage: i\nnetwork: overlay\n");
    assert_eq!(errs[0].field, "network");
    assert!(errs[0].message.contains("bridge, host, none"), "{}", errs[0]);
}

#[test]
fn missing_required_key_is_named() {
    let errs = errors("group: g\nimage: i\n");
    assert_eq!(errs[0].field, "name");
    assert!(errs[0].message.contains("missing"));
}

#[test]
fn semantic_errors_are_located_at_their_key() {
    let errs = errors("group: Guest\nname: n\nimage: i\ncpu: -1\nports: [80]\nhealth:\n  http: health\n");
    let fields: Vec<_> = errs.iter().map(|e| (e.field.as_str(), e.line)).collect();
    assert_eq!(fields, [("group", Some(1)), ("cpu", Some(4)), ("health.http", Some(7))]);
}

#[test]
fn exec_driver_needs_a_command_and_no_image() {
    assert!(AppSpec::from_yaml("group: g\nname: n\ndriver: exec\ncommand: [/bin/true]\n", None).is_ok());
    let errs = errors("group: g\nname: n\ndriver: exec\n");
    assert_eq!(errs[0].field, "command");
    let errs = errors("group: g\nname: n\n");
    assert_eq!(errs[0].field, "image");
}

#[test]
fn durations_and_defaults() {
    let spec = AppSpec::from_yaml(
        "group: g\nname: n\nimage: i\nports: [80]\nhealth:\n  tcp: true\n  interval: 500ms\nstop_timeout: 2s\n",
        None,
    )
    .unwrap();
    let health = spec.health.unwrap();
    assert_eq!(health.interval, Dur(500));
    assert_eq!(health.timeout, Dur::secs(2));
    assert_eq!(health.grace, Dur::secs(30));
    assert_eq!(health.max_failures, 3);
    assert_eq!(spec.stop_timeout, Dur::secs(2));
    assert_eq!(spec.instances, 1);
    assert_eq!(spec.upgrade, UpgradeSpec::default());
    let errs = errors("group: g\nname: n\nimage: i\nstop_timeout: 3 weeks\n");
    assert_eq!(errs[0].line, Some(4), "{}", errs[0]);
}

#[test]
fn environment_numbers_become_text() {
    let spec =
        AppSpec::from_yaml("group: g\nname: n\nimage: i\nenvironment:\n  PORT_HINT: 8080\n  DEBUG: true\n", None)
            .unwrap();
    assert_eq!(spec.environment["PORT_HINT"], "8080");
    assert_eq!(spec.environment["DEBUG"], "true");
}

#[test]
fn environment_refers_to_secrets_by_name_and_says_what_is_wrong_with_a_reference() {
    let text = "group: g\nname: n\nimage: i\nenvironment:\n  DB_PASSWORD: {secret: db_password}\n  A: x\n";
    let spec = AppSpec::from_yaml(text, None).unwrap();
    assert_eq!(spec.environment["DB_PASSWORD"].secret(), Some("db_password"));
    assert_eq!(spec.environment["A"], "x");
    assert_eq!(spec.environment["DB_PASSWORD"].to_string(), "<secret db_password>");
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["environment"]["DB_PASSWORD"], serde_json::json!({"secret": "db_password"}));
    assert_eq!(serde_json::from_value::<AppSpec>(json).unwrap(), spec);

    let bad_name = errors("group: g\nname: n\nimage: i\nenvironment:\n  X: {secret: ../etc}\n");
    assert_eq!(bad_name[0].field, "environment.X.secret", "{bad_name:?}");
    assert!(bad_name[0].message.contains("lowercase letters, digits"), "{}", bad_name[0]);
    let other_key = errors("group: g\nname: n\nimage: i\nenvironment:\n  X: {secrt: a}\n");
    assert_eq!(other_key[0].line, Some(5), "{}", other_key[0]);
    assert!(other_key[0].to_string().contains("secret"), "{}", other_key[0]);
}

#[test]
fn json_round_trip_keeps_the_spec() {
    let text = SEED_SAMPLE.replace("    - 8080\n", "    - 8080\n    - 8081\n");
    let spec = AppSpec::from_yaml(&text, None).unwrap();
    let json = serde_json::to_string(&spec).unwrap();
    let back: AppSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(spec, back);
}

#[test]
fn starter_spec_validates() {
    let spec = AppSpec::from_yaml(&starter("guest", "web"), Some("berth.yaml")).expect("starter is valid");
    assert_eq!(spec.id(), "guest/web");
}

#[test]
fn upgrade_fractions_are_bounded() {
    let errs = errors("group: g\nname: n\nimage: i\nupgrade:\n  min_health_capacity: 1.5\n");
    assert_eq!(errs[0].field, "upgrade.min_health_capacity");
    assert_eq!(errs[0].line, Some(5));
}

#[test]
fn balance_forms() {
    let spec = AppSpec::from_yaml("group: g\nname: n\nimage: i\nbalance: hash:header:X-User\n", None).unwrap();
    assert_eq!(spec.balance, Balance::Hash(HashOn::Header("x-user".into())));
    assert_eq!(spec.balance.to_string(), "hash:header:x-user");
    for text in ["round_robin", "least_conn", "hash:ip", "hash:cookie:session"] {
        assert_eq!(Balance::parse(text).unwrap().to_string(), text);
    }
    let errs = errors("group: g\nname: n\nimage: i\nbalance: random\n");
    assert_eq!(errs[0].field, "balance");
    assert!(errs[0].message.contains("least_conn"), "{}", errs[0]);
}

#[test]
fn slow_start_defaults_to_five_seconds_and_can_be_turned_off() {
    let spec = AppSpec::from_yaml("group: g\nname: n\nimage: i\n", None).unwrap();
    assert_eq!(spec.slow_start, Dur::secs(5));
    let spec = AppSpec::from_yaml("group: g\nname: n\nimage: i\nslow_start: 30s\n", None).unwrap();
    assert_eq!(spec.slow_start.as_duration(), std::time::Duration::from_secs(30));
    let spec = AppSpec::from_yaml("group: g\nname: n\nimage: i\nslow_start: 0s\n", None).unwrap();
    assert_eq!(spec.slow_start, Dur(0));
    let errs = errors("group: g\nname: n\nimage: i\nslow_start: soon\n");
    assert_eq!(errs[0].field, "slow_start", "{}", errs[0]);
}

#[test]
fn a_host_listed_twice_is_refused_at_its_entry() {
    let errs = errors("group: g\nname: n\nimage: i\nports: [80, 81]\nservices:\n  - a.test\n  - A.test:81\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].field.as_str(), errs[0].line), ("services[1]", Some(5)));
    assert!(errs[0].to_string().contains("already listed"), "{}", errs[0]);
}

/// A spec that only says `health: {http: /}` probes as the starter `berth init` writes does.
#[test]
fn health_defaults_are_what_init_writes() {
    let starter = AppSpec::from_yaml(&crate::spec::starter("g", "n"), None).unwrap();
    let bare = AppSpec::from_yaml("group: g\nname: n\nimage: i\nports: [80]\nhealth: {http: /}\n", None).unwrap();
    assert_eq!(bare.health, starter.health);
    assert_eq!(bare.upgrade, starter.upgrade, "and so do the upgrade gates");
}

/// Values no process or engine could ever run with are refused at validate, each at its field.
#[test]
fn values_that_can_never_run_are_refused_with_their_field() {
    let base = "group: g\nname: n\ndriver: exec\n";
    let field =
        |extra: &str| -> Vec<String> { errors(&format!("{base}{extra}")).into_iter().map(|e| e.field).collect() };
    assert_eq!(field("command: [\"/bin/echo\", \"a\\0b\"]\n"), ["command[1]"]);
    assert_eq!(field("command: \"echo \\0\"\n"), ["command"]);
    let nul_env = errors(&format!("{base}command: [x]\nenvironment:\n  A: \"x\\0y\"\n"));
    assert_eq!(nul_env[0].field, "environment.A");
    assert!(nul_env[0].message.contains("NUL"), "{}", nul_env[0]);
    let big = "v".repeat(200 * 1024);
    let big_env = errors(&format!("{base}command: [x]\nenvironment:\n  BIG: {big}\n"));
    assert_eq!(big_env[0].field, "environment.BIG");
    assert!(big_env[0].message.contains("128 KiB"), "{}", big_env[0]);
    let many: String = (0..12).map(|i| format!("  V{i}: {}\n", "v".repeat(100 * 1024))).collect();
    assert_eq!(field(&format!("command: [x]\nenvironment:\n{many}")), ["environment"]);
    assert_eq!(field("command: [x]\nstop_timeout: 2h\n"), ["stop_timeout"]);
    for huge in ["99999999999999999h", "99999999999999999", "400d", "9000h"] {
        let errs = errors(&format!("{base}command: [x]\nstop_timeout: {huge}\n"));
        assert_eq!(errs[0].field, "stop_timeout", "{huge}: {}", errs[0]);
        assert_eq!(errs[0].line, Some(5), "{huge}: {}", errs[0]);
    }
    let image = |i: &str| errors(&format!("group: g\nname: n\nimage: {i}\n"))[0].clone();
    for bad in ["\"../../etc\"", "\"a/../b\"", "\"web\\0x\"", "\"Web\"", "\"web:\"", "\"//web\"", "\"web@sha256:xyz\""]
    {
        let e = image(bad);
        assert_eq!(e.field, "image", "{bad}: {e}");
    }
    for good in [
        "nginx",
        "nginx:1.27",
        "registry.local:5000/team/web:v2",
        "localhost/web",
        "library/busybox@sha256:0123456789abcdef0123456789abcdef",
    ] {
        assert!(AppSpec::from_yaml(&format!("group: g\nname: n\nimage: {good}\n"), None).is_ok(), "{good}");
    }
}

/// `validate` reports every mistake in a file, each at its line with its full path, in the
/// writer's words, with a did-you-mean where there is one.
#[test]
fn every_mistake_at_once_in_the_writers_words() {
    let errs = errors("group: g\nname: n\nimage: i\nmemroy: 64\ncpux: 1\nportz: [1]\n");
    let found: Vec<(&str, Option<u64>, Option<&str>)> =
        errs.iter().map(|e| (e.field.as_str(), e.line, e.suggestion.as_deref())).collect();
    assert_eq!(
        found,
        [("memroy", Some(4), Some("memory")), ("cpux", Some(5), Some("cpu")), ("portz", Some(6), Some("ports"))]
    );

    let errs = errors("group: g\nname: n\nimage: i\ncommand: echo \"boom: x\"\nmemory: 64MB\ndriver: exce\n");
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(errs[0].message.contains("quote the value") && errs[0].line == Some(4), "{}", errs[0]);
    assert!(errs[1].message.contains("memory is in MiB") && errs[1].field == "memory", "{}", errs[1]);
    assert_eq!((errs[2].field.as_str(), errs[2].suggestion.as_deref()), ("driver", Some("exec")), "{}", errs[2]);

    let dup = errors("group: g\nname: n\nimage: i\nimage: j\n");
    assert!(dup[0].message.contains("`image` is written twice") && !dup[0].message.contains("Policy"), "{}", dup[0]);

    // A key under the wrong parent is named by its path.
    let nested = errors("group: g\nname: n\nimage: i\nports: [80]\nhealth:\n  http: /\n  intervall: 1s\n");
    assert_eq!((nested[0].field.as_str(), nested[0].suggestion.as_deref()), ("health.intervall", Some("interval")));
}

/// Setting a mistaken key aside must not invent a second mistake in the block it leaves empty.
#[test]
fn a_mistake_in_a_blocks_only_key_is_reported_once() {
    let errs = errors("group: g\nname: n\nimage: i\nupgrade:\n  strategy: blue_green\n");
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!((errs[0].field.as_str(), errs[0].suggestion.as_deref()), ("upgrade.strategy", Some("blue-green")));
    let errs = errors("group: g\nname: n\nimage: i\nports: [80]\nhealth:\n  htp: /\nmemory: 64MB\n");
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!((errs[0].field.as_str(), errs[1].field.as_str()), ("health.htp", "memory"), "{errs:?}");
}

#[test]
fn a_key_that_lost_its_indentation_is_told_where_it_belongs() {
    let errs = errors("group: g\nname: n\nimage: i\nports: [80]\nhealth:\n  tcp: true\ninterval: 1s\n");
    assert_eq!(errs[0].field, "interval");
    assert!(errs[0].message.contains("`interval` belongs under `health:`"), "{}", errs[0]);
}

#[test]
fn alias_bombs_and_deep_nesting_are_refused_quickly_and_say_why() {
    let mut bomb = String::from("group: g\nname: n\nimage: i\nx0: &x0 [a, a, a, a, a, a, a, a, a, a]\n");
    for i in 1..9 {
        let refs = vec![format!("*x{}", i - 1); 10].join(", ");
        bomb.push_str(&format!("x{i}: &x{i} [{refs}]\n"));
    }
    bomb.push_str("command: *x8\n");
    let started = std::time::Instant::now();
    let errs = AppSpec::from_yaml(&bomb, Some("bomb.yaml")).expect_err("a bomb is refused");
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "refused in {:?}", started.elapsed());
    let text = errs.to_string();
    assert!(text.contains("bomb.yaml"), "{text}");
    assert!(text.to_lowercase().contains("limit") || text.to_lowercase().contains("budget"), "{text}");

    let deep = format!("group: g\nname: n\nimage: i\ncommand: {}x{}\n", "[".repeat(200), "]".repeat(200));
    let text = AppSpec::from_yaml(&deep, None).expect_err("deep nesting is refused").to_string();
    assert!(
        text.to_lowercase().contains("limit")
            || text.to_lowercase().contains("depth")
            || text.to_lowercase().contains("nest"),
        "{text}"
    );
}
