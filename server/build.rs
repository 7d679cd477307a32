//! `sqlx::migrate!` embeds `migrations/postgres/` at compile time; a new file there must
//! rebuild the crate (an edited one does anyway: each is `include_str!`ed).

fn main() {
    println!("cargo:rerun-if-changed=../migrations/postgres");
}
