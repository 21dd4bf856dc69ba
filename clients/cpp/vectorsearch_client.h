// A small synchronous C++ client for vectorsearch.v1.SearchService.
//
// Every call returns the grpc::Status of the RPC (OK, or the server's code and message, e.g.
// INVALID_ARGUMENT, NOT_FOUND, UNAVAILABLE); results go to the out-parameters, which are
// left unspecified on error. Inconsistent arguments detected before sending (a vector buffer
// that is not a whole number of rows, ids/rows count mismatch) give INVALID_ARGUMENT without
// an RPC. Vectors are sent packed: little-endian IEEE-754 float32 bytes in Vectors.packed.
//
// A client is thread-safe (the channel and stub are); each call gets the client's deadline.
#pragma once

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "vectorsearch/v1/search_service.grpc.pb.h"
#include "vectorsearch/v1/search_service.pb.h"
#include "vectorsearch/v1/types.pb.h"

namespace vectorsearch {

// One nearest neighbour: its id and distance ("lower is closer").
struct SearchHit {
  std::string id;
  float distance = 0.0f;
};

// Search results: hits[q] are the hits of query q, nearest first.
struct SearchResult {
  std::vector<std::vector<SearchHit>> hits;
  // True when some shard did not answer; its id is in failed_shards.
  bool partial = false;
  std::vector<std::string> failed_shards;
};

// Optional knobs of Search.
struct SearchOptions {
  uint32_t ef = 0;  // 0 = collection default
  bool require_all_shards = false;
  const v1::Filter* filter = nullptr;  // not owned; nullptr = no filter
};

// One item fetched by Get.
struct GetItem {
  std::string id;
  v1::Metadata metadata;
  std::vector<float> vector;  // empty unless include_vectors
};

struct GetResult {
  std::vector<GetItem> items;
  std::vector<std::string> missing_ids;
};

// Encodes row-major float32 values as little-endian bytes (the Vectors.packed wire form).
std::string PackFloat32LE(const float* values, size_t count);

class VectorSearchClient {
 public:
  // Connects (lazily) over an insecure channel, e.g. "127.0.0.1:50051".
  explicit VectorSearchClient(const std::string& address);
  explicit VectorSearchClient(std::shared_ptr<grpc::Channel> channel);

  // Deadline of each call (default 30 s).
  void set_timeout(std::chrono::milliseconds timeout) { timeout_ = timeout; }

  // Waits until the channel is connected; false if it is not within `timeout`.
  bool WaitForConnected(std::chrono::milliseconds timeout);

  // Creates a collection (idempotent: an identical existing one gives *created = false).
  // `hnsw` may be nullptr for the server defaults.
  grpc::Status CreateCollection(const std::string& name, uint32_t dimension, v1::Metric metric,
                                bool* created = nullptr, const v1::HnswParams* hnsw = nullptr);

  // Inserts or replaces ids.size() items. `vectors` is row-major, ids.size() * dimension
  // floats. `metadata` is empty (no metadata) or one entry per id.
  grpc::Status Upsert(const std::string& collection, const std::vector<std::string>& ids,
                      const std::vector<float>& vectors, uint32_t dimension,
                      const std::vector<v1::Metadata>& metadata = {}, uint32_t* upserted = nullptr);

  // k nearest items to each query; `queries` is row-major, a whole number of rows of
  // `dimension` floats.
  grpc::Status Search(const std::string& collection, const std::vector<float>& queries, uint32_t dimension,
                      uint32_t k, SearchResult* result, const SearchOptions& options = {});

  // Fetches items by id (metadata, and vectors when asked); missing ids are listed.
  grpc::Status Get(const std::string& collection, const std::vector<std::string>& ids, bool include_vectors,
                   GetResult* result);

  // Deletes items by id; missing ids are ignored.
  grpc::Status Delete(const std::string& collection, const std::vector<std::string>& ids,
                      uint32_t* deleted = nullptr);

  // Drops a collection (idempotent: *dropped = false if it did not exist).
  grpc::Status DropCollection(const std::string& name, bool* dropped = nullptr);

  // The generated stub, for the RPCs this wrapper does not cover.
  v1::SearchService::Stub& stub() { return *stub_; }

 private:
  void Prepare(grpc::ClientContext* context) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::SearchService::Stub> stub_;
  std::chrono::milliseconds timeout_{30000};
};

}  // namespace vectorsearch
