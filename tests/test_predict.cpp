#include "tve/predict.hpp"

#include <torch/torch.h>

#include "test_helpers.hpp"
#include "tve/error.hpp"

namespace tve {
namespace {

TEST(TopK, OrdersClassesByProbability) {
  const auto logits = torch::tensor({{0.0f, 2.0f, 1.0f}, {3.0f, -1.0f, 0.0f}});
  const auto result = top_k(logits, {"a", "b", "c"}, 2);
  ASSERT_EQ(result.size(), 2u);
  ASSERT_EQ(result[0].size(), 2u);
  EXPECT_EQ(result[0][0].label, "b");
  EXPECT_EQ(result[0][1].label, "c");
  EXPECT_EQ(result[1][0].index, 0);
  // softmax([0,2,1])[1] = e^2 / (1 + e^2 + e)
  EXPECT_NEAR(result[0][0].probability, std::exp(2.0) / (1 + std::exp(2.0) + std::exp(1.0)), 1e-6);
  EXPECT_DOUBLE_EQ(result[1][0].logit, 3.0);
}

TEST(TopK, KIsClippedToTheNumberOfClasses) {
  const auto result = top_k(torch::tensor({{1.0f, 2.0f}}), {"x", "y"}, 10);
  EXPECT_EQ(result[0].size(), 2u);
}

TEST(TopK, RefusesMismatchedLabelsAndBadK) {
  test::expect_error<InvalidArgument>([] { top_k(torch::zeros({1, 3}), {"a"}, 1); }, {"3 logits for 1 labels"});
  test::expect_error<InvalidArgument>([] { top_k(torch::zeros({1, 1}), {"a"}, 0); }, {"--top-k must be at least 1"});
}

}  // namespace
}  // namespace tve
