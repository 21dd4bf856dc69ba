// End-to-end check of the C++ client against a running SearchService.
//
//   vs_e2e <host:port>
//
// Creates collection "cpp_e2e" (dimension 8, METRIC_L2), upserts 200 seeded pseudo-random
// vectors with ids c-<i> and tags, searches 5 of them (k=5) and checks each finds itself first
// at distance < 1e-4 with ascending distances; checks Get/Delete, that a wrong-dimension search
// gives INVALID_ARGUMENT and an unknown collection NOT_FOUND; drops the collection.
// Exit code: 0 when every check passed, 1 when any failed, 2 on bad usage.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "vectorsearch_client.h"

namespace {

using vectorsearch::GetResult;
using vectorsearch::SearchResult;
using vectorsearch::VectorSearchClient;
namespace v1 = vectorsearch::v1;

constexpr const char* kCollection = "cpp_e2e";
constexpr const char* kMissingCollection = "cpp_e2e_no_such_collection";
constexpr uint32_t kDim = 8;
constexpr size_t kCount = 200;
constexpr uint32_t kK = 5;
constexpr uint32_t kSeed = 20240607;
constexpr float kSelfDistance = 1e-4f;

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNKNOWN: return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS: return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED: return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE: return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED: return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL: return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS: return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "?";
  }
}

std::string Describe(const grpc::Status& status) {
  std::string text = CodeName(status.error_code());
  if (!status.error_message().empty()) text += ": " + status.error_message();
  return text;
}

class Checker {
 public:
  // Records one check; prints "[ok]" or "[FAIL]" with the detail. Returns `passed`.
  bool Check(const std::string& name, bool passed, const std::string& detail = "") {
    ++total_;
    if (passed) {
      std::printf("[ok]   %s\n", name.c_str());
    } else {
      ++failed_;
      std::printf("[FAIL] %s%s%s\n", name.c_str(), detail.empty() ? "" : ": ", detail.c_str());
    }
    std::fflush(stdout);
    return passed;
  }

  // A check that an RPC succeeded.
  bool Ok(const std::string& name, const grpc::Status& status) {
    return Check(name, status.ok(), "expected OK, got " + Describe(status));
  }

  // A check that an RPC failed with `expected`.
  bool Code(const std::string& name, const grpc::Status& status, grpc::StatusCode expected) {
    return Check(name, status.error_code() == expected,
                 std::string("expected ") + CodeName(expected) + ", got " + Describe(status));
  }

  int Summary(const std::string& address) const {
    if (failed_ == 0) {
      std::printf("vs_e2e: all %d checks passed against %s\n", total_, address.c_str());
      return 0;
    }
    std::printf("vs_e2e: %d of %d checks FAILED against %s\n", failed_, total_, address.c_str());
    return 1;
  }

 private:
  int total_ = 0;
  int failed_ = 0;
};

std::string IdOf(size_t i) { return "c-" + std::to_string(i); }

// Row index of an id "c-<i>", or -1.
long RowOf(const std::string& id) {
  if (id.rfind("c-", 0) != 0 || id.size() < 3) return -1;
  char* end = nullptr;
  long row = std::strtol(id.c_str() + 2, &end, 10);
  if (*end != '\0' || row < 0 || static_cast<size_t>(row) >= kCount) return -1;
  return row;
}

float SquaredL2(const float* a, const float* b) {
  double sum = 0.0;
  for (uint32_t j = 0; j < kDim; ++j) {
    double d = static_cast<double>(a[j]) - static_cast<double>(b[j]);
    sum += d * d;
  }
  return static_cast<float>(sum);
}

std::string Join(const std::vector<std::string>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + values[i];
  return out + "]";
}

std::string HitsText(const std::vector<vectorsearch::SearchHit>& hits) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < hits.size(); ++i) out << (i ? ", " : "") << hits[i].id << "@" << hits[i].distance;
  out << "]";
  return out.str();
}

void CheckSearch(Checker& check, VectorSearchClient& client, const std::vector<float>& data) {
  const std::vector<size_t> rows = {0, 42, 99, 150, 199};
  std::vector<float> queries;
  for (size_t row : rows) queries.insert(queries.end(), &data[row * kDim], &data[row * kDim] + kDim);
  SearchResult result;
  grpc::Status status = client.Search(kCollection, queries, kDim, kK, &result);
  if (!check.Ok("search 5 stored vectors (k=5)", status)) return;
  check.Check("search returns one result list per query", result.hits.size() == rows.size(),
              "expected " + std::to_string(rows.size()) + " lists, got " + std::to_string(result.hits.size()));
  check.Check("search is not partial", !result.partial, "partial=true, failed shards " + Join(result.failed_shards));
  for (size_t q = 0; q < rows.size() && q < result.hits.size(); ++q) {
    const auto& hits = result.hits[q];
    const std::string want = IdOf(rows[q]);
    const std::string label = "query " + want + ": ";
    const std::string got = HitsText(hits);
    check.Check(label + "k hits", hits.size() == kK,
                "expected " + std::to_string(kK) + " hits, got " + std::to_string(hits.size()) + " " + got);
    if (hits.empty()) continue;
    check.Check(label + "first hit is itself", hits[0].id == want, "got " + got);
    check.Check(label + "self distance < 1e-4", hits[0].distance < kSelfDistance && hits[0].distance > -kSelfDistance,
                "got " + got);
    bool ascending = true;
    for (size_t j = 1; j < hits.size(); ++j) ascending = ascending && hits[j - 1].distance <= hits[j].distance;
    check.Check(label + "distances ascend", ascending, "got " + got);
    // The distances are squared L2 of the stored vectors (METRIC_L2).
    std::string wrong;
    for (const auto& hit : hits) {
      long row = RowOf(hit.id);
      if (row < 0) {
        wrong += " unknown id " + hit.id;
        continue;
      }
      float exact = SquaredL2(&data[rows[q] * kDim], &data[static_cast<size_t>(row) * kDim]);
      if (std::fabs(exact - hit.distance) > 1e-4f * std::max(1.0f, exact)) {
        wrong += " " + hit.id + " got " + std::to_string(hit.distance) + " want " + std::to_string(exact);
      }
    }
    check.Check(label + "distances are squared L2", wrong.empty(), wrong);
  }
}

void CheckGetAndDelete(Checker& check, VectorSearchClient& client, const std::vector<float>& data) {
  GetResult got;
  grpc::Status status = client.Get(kCollection, {"c-3", "c-7", "no-such-id"}, /*include_vectors=*/true, &got);
  if (check.Ok("get 2 stored ids and 1 missing id", status)) {
    check.Check("get lists the missing id", got.missing_ids == std::vector<std::string>{"no-such-id"},
                "missing_ids=" + Join(got.missing_ids));
    check.Check("get returns 2 items", got.items.size() == 2, "got " + std::to_string(got.items.size()) + " items");
    for (const auto& item : got.items) {
      long row = RowOf(item.id);
      bool same = row >= 0 && item.vector.size() == kDim;
      for (uint32_t j = 0; same && j < kDim; ++j) same = item.vector[j] == data[static_cast<size_t>(row) * kDim + j];
      check.Check("get " + item.id + ": vector round-trips exactly", same,
                  "got " + std::to_string(item.vector.size()) + " floats that differ from the upserted row");
      std::vector<std::string> tags(item.metadata.tags().begin(), item.metadata.tags().end());
      const std::vector<std::string> want = {"cpp_e2e", row % 2 == 0 ? "even" : "odd"};
      check.Check("get " + item.id + ": tags round-trip", tags == want, "tags=" + Join(tags));
    }
  }

  uint32_t deleted = 0;
  status = client.Delete(kCollection, {"c-7", "no-such-id"}, &deleted);
  if (check.Ok("delete c-7 and a missing id", status)) {
    check.Check("delete counts 1 item", deleted == 1, "deleted=" + std::to_string(deleted));
  }
  status = client.Get(kCollection, {"c-7"}, false, &got);
  if (check.Ok("get c-7 after delete", status)) {
    check.Check("deleted c-7 is missing", got.items.empty() && got.missing_ids == std::vector<std::string>{"c-7"},
                std::to_string(got.items.size()) + " items, missing_ids=" + Join(got.missing_ids));
  }
  std::vector<float> query(&data[7 * kDim], &data[7 * kDim] + kDim);
  SearchResult result;
  status = client.Search(kCollection, query, kDim, kK, &result);
  if (check.Ok("search c-7's vector after delete", status) && result.hits.size() == 1) {
    bool absent = true;
    for (const auto& hit : result.hits[0]) absent = absent && hit.id != "c-7";
    check.Check("deleted c-7 is not a hit", absent, "got " + HitsText(result.hits[0]));
  }
}

void CheckErrors(Checker& check, VectorSearchClient& client) {
  SearchResult result;
  const std::vector<float> short_query(kDim / 2, 0.5f);
  grpc::Status status = client.Search(kCollection, short_query, kDim / 2, kK, &result);
  check.Code("search with dimension 4 on a dimension-8 collection", status, grpc::StatusCode::INVALID_ARGUMENT);
  const std::vector<float> query(kDim, 0.5f);
  status = client.Search(kMissingCollection, query, kDim, kK, &result);
  check.Code("search an unknown collection", status, grpc::StatusCode::NOT_FOUND);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <host:port>\n", argv[0]);
    return 2;
  }
  const std::string address = argv[1];
  Checker check;
  VectorSearchClient client(address);
  client.set_timeout(std::chrono::seconds(30));
  if (!check.Check("connect to " + address, client.WaitForConnected(std::chrono::seconds(30)),
                   "not connected within 30 s")) {
    return check.Summary(address);
  }

  // Start from a clean slate in case an earlier run was interrupted.
  bool dropped = false;
  check.Ok("drop a leftover collection (idempotent)", client.DropCollection(kCollection, &dropped));

  bool created = false;
  grpc::Status status = client.CreateCollection(kCollection, kDim, v1::METRIC_L2, &created);
  if (!check.Ok("create collection cpp_e2e (dim 8, L2)", status)) return check.Summary(address);
  check.Check("create reports created=true", created, "created=false");

  std::mt19937 rng(kSeed);
  // mt19937's output sequence is fixed by the standard (unlike the distributions): map it to
  // [-1, 1) by hand so the data are the same with every standard library.
  std::vector<float> data(kCount * kDim);
  for (float& x : data) x = static_cast<float>(static_cast<double>(rng()) / 2147483648.0 - 1.0);
  std::vector<std::string> ids;
  std::vector<v1::Metadata> metadata(kCount);
  for (size_t i = 0; i < kCount; ++i) {
    ids.push_back(IdOf(i));
    metadata[i].add_tags("cpp_e2e");
    metadata[i].add_tags(i % 2 == 0 ? "even" : "odd");
  }
  uint32_t upserted = 0;
  status = client.Upsert(kCollection, ids, data, kDim, metadata, &upserted);
  if (check.Ok("upsert 200 packed vectors", status)) {
    check.Check("upsert counts 200 items", upserted == kCount, "upserted=" + std::to_string(upserted));
    CheckSearch(check, client, data);
    CheckGetAndDelete(check, client, data);
  }
  CheckErrors(check, client);

  dropped = false;
  status = client.DropCollection(kCollection, &dropped);
  if (check.Ok("drop collection cpp_e2e", status)) check.Check("drop reports dropped=true", dropped, "dropped=false");
  return check.Summary(address);
}
