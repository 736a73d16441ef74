//! The in-memory `SessionStore` without a journal: the store conformance suite
//! (`sessionhub_testkit::conformance::store`). With a journal: `store_redb.rs`.

use std::sync::Arc;

use sessionhub::store::MemoryStore;
use sessionhub_testkit::conformance::store::StoreFixture;

async fn memory() -> StoreFixture {
    StoreFixture::new(Arc::new(MemoryStore::new()), ())
}

sessionhub_testkit::store_conformance!(memory);
