// Helpers of the chat template tests: conversations from JSON, renders shown with their masks.
#pragma once

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "util/testing.h"
#include "xtuner/data/chat_template.h"
#include "xtuner/data/dataset.h"

namespace xt {

// The text with trainable parts in [[...]].
inline std::string Show(const std::vector<Segment>& segments) {
  std::string s;
  for (const auto& seg : segments) s += seg.trainable ? "[[" + seg.text + "]]" : seg.text;
  return s;
}

inline std::string Concat(const std::vector<Segment>& segments) {
  std::string s;
  for (const auto& seg : segments) s += seg.text;
  return s;
}

// A conversation read as the dataset reader reads a JSONL line (the test fails if it cannot).
inline Conversation Conv(const nlohmann::ordered_json& sample) {
  Conversation c;
  SampleError e;
  EXPECT_TRUE(ParseChatSample(sample, &c, &e)) << e.message;
  return c;
}

inline Conversation Conv(const char* json) { return Conv(testing::OrderedJson(json)); }

}  // namespace xt
